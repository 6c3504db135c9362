//! .npy files as the Algonauts 2023 release writes them: numeric arrays, and the ROI
//! name mappings, which are a Python dict pickled inside a 0-d object array.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use ndarray::{Array, Array1, Array2, ArrayBase, Data, Dimension, IxDyn};
use ndarray_npy::{ReadNpyError, ReadNpyExt, WritableElement, WriteNpyExt};

use crate::error::{DataError, Result};

fn open(path: &Path) -> Result<BufReader<File>> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| DataError::io(path, e))
}

fn npy_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Npy {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Reads a numeric array of any integer, float or bool dtype as f64, so that callers
/// need not care whether a mask was saved as int64, float64 or uint8.
fn read_any_as_f64(path: &Path) -> Result<Array<f64, IxDyn>> {
    macro_rules! try_type {
        ($t:ty) => {
            match Array::<$t, IxDyn>::read_npy(open(path)?) {
                Ok(a) => return Ok(a.mapv(|v| v as f64)),
                Err(ReadNpyError::WrongDescriptor(_)) => {}
                Err(e) => return Err(npy_err(path, e)),
            }
        };
    }
    try_type!(f64);
    try_type!(f32);
    try_type!(i64);
    try_type!(i32);
    try_type!(i16);
    try_type!(i8);
    try_type!(u8);
    try_type!(u16);
    try_type!(u32);
    try_type!(u64);
    match Array::<bool, IxDyn>::read_npy(open(path)?) {
        Ok(a) => Ok(a.mapv(|v| if v { 1.0 } else { 0.0 })),
        Err(e) => Err(npy_err(path, e)),
    }
}

/// Reads a 2-D float array (fMRI betas [images, vertices]); float64 is narrowed.
pub fn read_f32_2d(path: &Path) -> Result<Array2<f32>> {
    let arr = match Array2::<f32>::read_npy(open(path)?) {
        Ok(a) => a,
        Err(ReadNpyError::WrongDescriptor(_)) => match Array2::<f64>::read_npy(open(path)?) {
            Ok(a) => a.mapv(|v| v as f32),
            Err(e) => return Err(npy_err(path, e)),
        },
        Err(e) => return Err(npy_err(path, e)),
    };
    if let Some(bad) = arr.iter().position(|v| !v.is_finite()) {
        let cols = arr.ncols().max(1);
        return Err(npy_err(
            path,
            format!(
                "non-finite value at row {}, column {}",
                bad / cols,
                bad % cols
            ),
        ));
    }
    Ok(arr)
}

/// Reads a 1-D float vector (noise ceilings, ncsnr).
pub fn read_f32_1d(path: &Path) -> Result<Array1<f32>> {
    let arr = read_any_as_f64(path)?;
    if arr.ndim() != 1 {
        return Err(npy_err(
            path,
            format!("expected a 1-D array, found shape {:?}", arr.shape()),
        ));
    }
    Ok(arr
        .into_dimensionality::<ndarray::Ix1>()
        .map_err(|e| npy_err(path, e))?
        .mapv(|v| v as f32))
}

/// Reads a 1-D integer label vector (ROI masks: one label per vertex, 0 = none).
pub fn read_labels(path: &Path) -> Result<Array1<i64>> {
    let arr = read_any_as_f64(path)?;
    if arr.ndim() != 1 {
        return Err(npy_err(
            path,
            format!("expected a 1-D label vector, found shape {:?}", arr.shape()),
        ));
    }
    let mut out = Array1::<i64>::zeros(arr.len());
    for (i, (o, &v)) in out.iter_mut().zip(arr.iter()).enumerate() {
        if !v.is_finite() || v.fract() != 0.0 {
            return Err(npy_err(
                path,
                format!("label {v} at index {i} is not an integer"),
            ));
        }
        *o = v as i64;
    }
    Ok(out)
}

/// Writes any numeric array.
pub fn write<A, S, D>(path: &Path, array: &ArrayBase<S, D>) -> Result<()>
where
    A: WritableElement,
    S: Data<Elem = A>,
    D: Dimension,
{
    let file = File::create(path).map_err(|e| DataError::io(path, e))?;
    let mut w = BufWriter::new(file);
    array.write_npy(&mut w).map_err(|e| npy_err(path, e))?;
    w.flush().map_err(|e| DataError::io(path, e))
}

/// Where a C-order .npy's data starts and what it holds: arrays too large to read whole
/// (pixel and feature caches at NSD size) are read and written in row blocks instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub descr: String,
    pub shape: Vec<usize>,
    pub data_offset: u64,
}

impl Layout {
    /// Bytes of one row (the product of every axis but the first), in items.
    pub fn row_items(&self) -> usize {
        self.shape.iter().skip(1).product()
    }
}

/// The layout of `path`, from its header alone; Fortran-order files are refused
/// because rows of them are not contiguous.
pub fn layout(path: &Path) -> Result<Layout> {
    use std::io::Read;
    let mut head = Vec::with_capacity(4096);
    File::open(path)
        .map_err(|e| DataError::io(path, e))?
        .take(1 << 16)
        .read_to_end(&mut head)
        .map_err(|e| DataError::io(path, e))?;
    let npy = vcl_contract::npy::Npy::parse(&head).map_err(|e| npy_err(path, e))?;
    if !npy
        .field("fortran_order")
        .is_some_and(|f| f.starts_with("False"))
    {
        return Err(npy_err(
            path,
            "expected a C-order array (fortran_order False)",
        ));
    }
    let descr = npy
        .descr()
        .ok_or_else(|| npy_err(path, "no descr in the .npy header"))?
        .to_string();
    let shape = npy.shape().map_err(|e| npy_err(path, e))?;
    Ok(Layout {
        descr,
        shape,
        data_offset: (head.len() - npy.body.len()) as u64,
    })
}

/// A version 1.0 header for a C-order array, padded so the data starts 64-aligned as
/// numpy writes it.
pub fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((dict.len() as u16).to_le_bytes());
    out.extend(dict.as_bytes());
    out
}

/// Writes a .npy of a known shape row block by row block, so that the array is never
/// whole in memory; `finish` refuses a file that got fewer or more bytes than its
/// header promised.
pub struct NpyWriter {
    out: BufWriter<File>,
    path: std::path::PathBuf,
    remaining: u64,
}

impl NpyWriter {
    /// `item_bytes` is the size of one element of `descr` (4 for `<f4`, 1 for `|u1`).
    pub fn create(path: &Path, descr: &str, shape: &[usize], item_bytes: usize) -> Result<Self> {
        let file = File::create(path).map_err(|e| DataError::io(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header(descr, shape))
            .map_err(|e| DataError::io(path, e))?;
        Ok(NpyWriter {
            out,
            path: path.to_path_buf(),
            remaining: (shape.iter().product::<usize>() * item_bytes) as u64,
        })
    }

    /// Appends float32 items, little-endian.
    pub fn write_f32(&mut self, items: &[f32]) -> Result<()> {
        let mut bytes = Vec::with_capacity(items.len() * 4);
        for v in items {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.write_bytes(&bytes)
    }

    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let len = bytes.len() as u64;
        if len > self.remaining {
            return Err(npy_err(
                &self.path,
                format!("{len} more bytes than the header's shape holds"),
            ));
        }
        self.out
            .write_all(bytes)
            .map_err(|e| DataError::io(&self.path, e))?;
        self.remaining -= len;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        if self.remaining != 0 {
            return Err(npy_err(
                &self.path,
                format!("{} bytes short of the header's shape", self.remaining),
            ));
        }
        self.out.flush().map_err(|e| DataError::io(&self.path, e))
    }
}

/// Reads `mapping_<family>.npy`: `numpy.load(path, allow_pickle=True).item()` in Python.
pub fn read_mapping(path: &Path) -> Result<BTreeMap<i64, String>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bad = |reason: String| DataError::Mapping {
        path: path.to_path_buf(),
        reason,
    };
    let body = npy_body(&bytes).map_err(&bad)?;
    // numpy's own classes (_reconstruct, ndarray, dtype) cannot be resolved outside
    // Python; replacing them by None leaves the dict the pickle carries intact.
    let opts = serde_pickle::DeOptions::new().replace_unresolved_globals();
    let value = serde_pickle::value_from_slice(body, opts)
        .map_err(|e| bad(format!("not a readable pickle: {e}")))?;
    let dict = find_dict(&value).ok_or_else(|| bad("the pickle holds no dict".into()))?;
    let mut out = BTreeMap::new();
    for (k, v) in dict {
        let key = match k {
            serde_pickle::HashableValue::I64(i) => *i,
            serde_pickle::HashableValue::F64(f) if f.fract() == 0.0 => *f as i64,
            other => return Err(bad(format!("label {other:?} is not an integer"))),
        };
        let name = match v {
            serde_pickle::Value::String(s) => s.clone(),
            serde_pickle::Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            other => {
                return Err(bad(format!(
                    "name of label {key} is {other:?}, not a string"
                )))
            }
        };
        out.insert(key, name);
    }
    Ok(out)
}

fn find_dict(
    v: &serde_pickle::Value,
) -> Option<&BTreeMap<serde_pickle::HashableValue, serde_pickle::Value>> {
    use serde_pickle::Value;
    match v {
        Value::Dict(d) => Some(d),
        Value::List(items) | Value::Tuple(items) => items.iter().find_map(find_dict),
        _ => None,
    }
}

/// The bytes after the .npy header, checking that the header declares an object array.
fn npy_body(bytes: &[u8]) -> std::result::Result<&[u8], String> {
    let npy = vcl_contract::npy::Npy::parse(bytes)?;
    if npy.descr() != Some("|O") {
        return Err(format!(
            "expected an object array (descr '|O'), header is {}",
            npy.header.trim()
        ));
    }
    Ok(npy.body)
}

pub fn write_mapping(path: &Path, mapping: &BTreeMap<i64, String>) -> Result<()> {
    let mut p: Vec<u8> = Vec::new();
    // ndarray._reconstruct(ndarray, (0,), b'b')
    p.extend_from_slice(b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n");
    p.extend_from_slice(b"cnumpy\nndarray\n");
    p.extend_from_slice(b"K\x00\x85U\x01b\x87R");
    // __setstate__((1, (), dtype('O8'), False, [dict]))
    p.extend_from_slice(b"(K\x01)cnumpy\ndtype\nU\x02O8\x89\x88\x87R");
    p.extend_from_slice(b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb");
    p.extend_from_slice(b"\x89]}");
    if !mapping.is_empty() {
        p.push(b'(');
        for (k, v) in mapping {
            let k = i32::try_from(*k).map_err(|_| {
                DataError::Invalid(format!("ROI label {k} does not fit a 32-bit integer"))
            })?;
            p.push(b'J');
            p.extend_from_slice(&k.to_le_bytes());
            p.push(b'X');
            p.extend_from_slice(&(v.len() as u32).to_le_bytes());
            p.extend_from_slice(v.as_bytes());
        }
        p.push(b'u');
    }
    p.extend_from_slice(b"atb.");

    let dict = "{'descr': '|O', 'fortran_order': False, 'shape': (), }";
    // Header padded with spaces so that magic + length + header is a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let total = unpadded.div_ceil(64) * 64;
    let mut header = dict.to_string();
    header.push_str(&" ".repeat(total - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(total + p.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&p);
    std::fs::write(path, out).map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_npy_reads_back_with_its_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        let mut w = NpyWriter::create(&path, "<f4", &[3, 2], 4).unwrap();
        w.write_f32(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        w.write_f32(&[5.0, 6.0]).unwrap();
        assert!(w.write_f32(&[7.0]).is_err(), "more than the shape holds");
        w.finish().unwrap();
        let a = read_f32_2d(&path).unwrap();
        assert_eq!(a, ndarray::array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]]);
        let l = layout(&path).unwrap();
        assert_eq!((l.descr.as_str(), l.shape.clone()), ("<f4", vec![3, 2]));
        assert_eq!(l.data_offset % 64, 0);
        assert_eq!(l.row_items(), 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), l.data_offset + 24);

        let short = dir.path().join("short.npy");
        let mut w = NpyWriter::create(&short, "|u1", &[4], 1).unwrap();
        w.write_bytes(&[1, 2]).unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(
            e.contains("short.npy") && e.contains("2 bytes short"),
            "{e}"
        );
    }

    #[test]
    fn mapping_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mapping_prf-visualrois.npy");
        let m: BTreeMap<i64, String> = [(1, "V1v"), (2, "V1d"), (7, "hV4")]
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        write_mapping(&path, &m).unwrap();
        assert_eq!(read_mapping(&path).unwrap(), m);
    }

    #[test]
    fn labels_accept_float_and_int() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.npy");
        let b = dir.path().join("b.npy");
        write(&a, &Array1::from(vec![0.0f64, 1.0, 7.0])).unwrap();
        write(&b, &Array1::from(vec![0i32, 1, 7])).unwrap();
        assert_eq!(read_labels(&a).unwrap(), read_labels(&b).unwrap());
        write(&a, &Array1::from(vec![0.5f64])).unwrap();
        assert!(read_labels(&a)
            .unwrap_err()
            .to_string()
            .contains("not an integer"));
    }

    #[test]
    fn corrupt_npy_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("lh_training_fmri.npy");
        std::fs::write(&a, b"\x93NUMPY garbage").unwrap();
        let e = read_f32_2d(&a).unwrap_err().to_string();
        assert!(e.contains("lh_training_fmri.npy"), "{e}");
    }
}
