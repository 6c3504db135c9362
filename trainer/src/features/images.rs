//! The image pipeline: decode PNG/JPEG, resize to the backbone's input size (no crop,
//! as METHOD.md), cache the decoded pixels on disk, and hand out normalized batches.
//!
//! Pixels are cached as uint8 [N, 3, S, S] in one .npy per (image list, size): a
//! quarter of float32's size, readable from Python, and epochs never decode again.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use image::imageops::FilterType;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array4;
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use vcl_dataset::algonauts::ImageEntry;
use vcl_dataset::error::{DataError, Result};

/// ImageNet channel statistics torchvision's classifiers were trained with; one
/// definition, in the contract, so exported graphs normalize exactly as training did.
pub use vcl_contract::manifest::{IMAGENET_MEAN, IMAGENET_STD};

/// Bump when the resize or layout changes, so old caches are not reused.
const CACHE_VERSION: &str = "pixels-v1-triangle";

pub fn decode(path: &Path) -> Result<RgbImage> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    let img = reader.decode().map_err(|e| DataError::Image {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(img.to_rgb8())
}

/// Resizes to size x size (bilinear with antialiasing, like torchvision's Resize) and
/// lays the pixels out channel-first.
pub fn to_chw(img: &RgbImage, size: u32) -> Vec<u8> {
    let resized = if img.width() == size && img.height() == size {
        img.clone()
    } else {
        image::imageops::resize(img, size, size, FilterType::Triangle)
    };
    let plane = (size * size) as usize;
    let mut out = vec![0u8; 3 * plane];
    for (i, p) in resized.pixels().enumerate() {
        out[i] = p[0];
        out[plane + i] = p[1];
        out[2 * plane + i] = p[2];
    }
    out
}

/// Decoded, resized pixels of an image list, uint8 [N, 3, S, S], on disk.
///
/// Batches are read from the file with positioned reads rather than the array being
/// loaded or memory-mapped whole: at NSD size the cache is 1.5 GB per subject at 224 px,
/// and pages of a mapping count toward the process's resident set once touched, while
/// reads from the page cache cost one copy of the batch and leave the kernel free to
/// evict. Memory is one batch, whatever the number of images.
pub struct PixelCache {
    pub size: u32,
    pub path: PathBuf,
    len: usize,
    file: File,
    data_offset: u64,
}

impl PixelCache {
    /// Opens the cache for `entries` at `size` from `cache_dir`, or decodes every image
    /// (in parallel, with a progress bar) straight into it. The key covers names, file
    /// sizes and modification times, so an edited image invalidates it.
    pub fn build_or_load(entries: &[ImageEntry], size: u32, cache_dir: &Path) -> Result<Self> {
        let key = cache_key(entries, size)?;
        let path = cache_dir.join(format!("{key}.npy"));
        if path.exists() {
            match Self::open(&path, entries.len(), size) {
                Ok(cache) => {
                    tracing::debug!(path = %path.display(), "pixel cache hit");
                    return Ok(cache);
                }
                // A cache cut short by a killed run is rebuilt, not trusted.
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable pixel cache")
                }
            }
        }
        std::fs::create_dir_all(cache_dir).map_err(|e| DataError::io(cache_dir, e))?;
        let tmp = vcl_dataset::paths::partial(&path);
        decode_into(entries, size, &tmp)?;
        std::fs::rename(&tmp, &path).map_err(|e| DataError::io(&path, e))?;
        Self::open(&path, entries.len(), size)
    }

    /// Writes `pixels` as a cache file at `path` and opens it (tests, tools).
    pub fn write(path: &Path, pixels: &Array4<u8>) -> Result<Self> {
        let (n, c, h, w) = pixels.dim();
        if c != 3 || h != w {
            return Err(DataError::Invalid(format!(
                "pixels must be [N, 3, S, S], not [{n}, {c}, {h}, {w}]"
            )));
        }
        vcl_dataset::npy::write(path, pixels)?;
        Self::open(path, n, h as u32)
    }

    /// Opens an existing cache file, checking that it holds `n` images at `size`.
    fn open(path: &Path, n: usize, size: u32) -> Result<Self> {
        let s = size as usize;
        let layout = vcl_dataset::npy::layout(path)?;
        let bad = |reason: String| DataError::Npy {
            path: path.to_path_buf(),
            reason,
        };
        if layout.descr != "|u1" || layout.shape != [n, 3, s, s] {
            return Err(bad(format!(
                "holds {} {:?}, expected |u1 [{n}, 3, {s}, {s}]",
                layout.descr, layout.shape
            )));
        }
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let have = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        let want = layout.data_offset + (n * 3 * s * s) as u64;
        if have != want {
            return Err(bad(format!("{have} bytes where the header needs {want}")));
        }
        Ok(PixelCache {
            size,
            path: path.to_path_buf(),
            len: n,
            file,
            data_offset: layout.data_offset,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn plane(&self) -> usize {
        3 * (self.size as usize).pow(2)
    }

    /// uint8 pixels of `rows`, [rows.len(), 3, S, S] flattened.
    pub fn read_rows(&self, rows: &[usize]) -> Result<Vec<u8>> {
        let plane = self.plane();
        let mut buf = vec![0u8; rows.len() * plane];
        for (dst, &r) in buf.chunks_mut(plane).zip(rows) {
            if r >= self.len {
                return Err(DataError::Invalid(format!(
                    "row {r} is out of range: {} holds {} images",
                    self.path.display(),
                    self.len
                )));
            }
            self.file
                .read_exact_at(dst, self.data_offset + (r * plane) as u64)
                .map_err(|e| DataError::io(&self.path, e))?;
        }
        Ok(buf)
    }

    /// float32 [B, 3, S, S] in [0, 1] for `rows`, on `device`.
    pub fn batch_unit(&self, rows: &[usize], device: Device) -> Result<Tensor> {
        let s = self.size as i64;
        let buf = self.read_rows(rows)?;
        // uint8 travels (4x fewer bytes than float32); the GPU converts.
        let bytes = Tensor::from_slice(&buf).view([rows.len() as i64, 3, s, s]);
        Ok(crate::device::upload(&bytes, device).to_kind(Kind::Float) / 255.0)
    }

    /// float32 [B, 3, S, S], ImageNet-normalized: what torchvision backbones expect.
    pub fn batch(&self, rows: &[usize], device: Device) -> Result<Tensor> {
        Ok(normalize(&self.batch_unit(rows, device)?))
    }
}

/// (x - mean) / std per channel, for x in [0, 1] of shape [B, 3, H, W].
pub fn normalize(x: &Tensor) -> Tensor {
    let dev = x.device();
    let mean = Tensor::from_slice(&IMAGENET_MEAN)
        .view([1, 3, 1, 1])
        .to_device(dev);
    let std = Tensor::from_slice(&IMAGENET_STD)
        .view([1, 3, 1, 1])
        .to_device(dev);
    (x - mean) / std
}

fn cache_key(entries: &[ImageEntry], size: u32) -> Result<String> {
    let mut h = Sha256::new();
    h.update(CACHE_VERSION.as_bytes());
    h.update(size.to_le_bytes());
    for e in entries {
        let meta = std::fs::metadata(&e.path).map_err(|err| DataError::io(&e.path, err))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.update(e.path.to_string_lossy().as_bytes());
        h.update(meta.len().to_le_bytes());
        h.update(mtime.to_le_bytes());
    }
    Ok(format!(
        "pixels-{size}px-{}",
        &hex::encode(h.finalize())[..16]
    ))
}

/// Decodes every image into a new cache file at `path`, each thread writing its images
/// at their offsets, so that memory is one image per thread.
fn decode_into(entries: &[ImageEntry], size: u32, path: &Path) -> Result<()> {
    let s = size as usize;
    let plane = 3 * s * s;
    let header = vcl_dataset::npy::header("|u1", &[entries.len(), 3, s, s]);
    let file = File::create(path).map_err(|e| DataError::io(path, e))?;
    file.write_all_at(&header, 0)
        .and_then(|()| file.set_len((header.len() + entries.len() * plane) as u64))
        .map_err(|e| DataError::io(path, e))?;
    let offset = header.len();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(entries.len().max(1));
    let bar = ProgressBar::new(entries.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("decoding {pos}/{len} images {wide_bar} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let per = entries.len().div_ceil(threads).max(1);
    let result: Result<()> = std::thread::scope(|scope| {
        let handles: Vec<_> = entries
            .chunks(per)
            .enumerate()
            .map(|(t, ents)| {
                let (bar, file) = (bar.clone(), &file);
                scope.spawn(move || -> Result<()> {
                    for (i, e) in ents.iter().enumerate() {
                        let at = offset + (t * per + i) * plane;
                        file.write_all_at(&to_chw(&decode(&e.path)?, size), at as u64)
                            .map_err(|err| DataError::io(path, err))?;
                        bar.inc(1);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| DataError::Invalid("an image-decoding thread panicked".into()))??;
        }
        Ok(())
    });
    bar.finish_and_clear();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dir: &Path, row: usize, img: &RgbImage) -> ImageEntry {
        let path = dir.join(vcl_dataset::algonauts::layout::train_image_name(
            row,
            row + 1,
        ));
        img.save(&path).unwrap();
        ImageEntry {
            path,
            row,
            nsd_id: row as u32 + 1,
        }
    }

    #[test]
    fn cache_round_trips_and_normalizes() {
        let dir = tempfile::tempdir().unwrap();
        let red = RgbImage::from_pixel(20, 10, image::Rgb([255, 0, 0]));
        let gray = RgbImage::from_pixel(8, 8, image::Rgb([128, 128, 128]));
        let entries = vec![entry(dir.path(), 0, &red), entry(dir.path(), 1, &gray)];
        let cache_dir = dir.path().join("cache");
        let a = PixelCache::build_or_load(&entries, 16, &cache_dir).unwrap();
        let b = PixelCache::build_or_load(&entries, 16, &cache_dir).unwrap();
        assert_eq!(a.path, b.path);
        assert_eq!(a.read_rows(&[0, 1]).unwrap(), b.read_rows(&[0, 1]).unwrap());
        assert!(a.read_rows(&[2]).unwrap_err().to_string().contains("row 2"));
        // A cache cut short (a killed run) is rebuilt, not read past its end.
        let before = b.read_rows(&[0, 1]).unwrap();
        let len = std::fs::metadata(&a.path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&a.path)
            .unwrap()
            .set_len(len - 7)
            .unwrap();
        let c = PixelCache::build_or_load(&entries, 16, &cache_dir).unwrap();
        assert_eq!(c.read_rows(&[0, 1]).unwrap(), before);
        let x = a.batch(&[0], Device::Cpu).unwrap();
        assert_eq!(x.size(), vec![1, 3, 16, 16]);
        let r = x.double_value(&[0, 0, 5, 5]);
        assert!((r - (1.0 - 0.485) / 0.229).abs() < 1e-5, "{r}");
        let g = x.double_value(&[0, 1, 5, 5]);
        assert!((g - (0.0 - 0.456) / 0.224).abs() < 1e-5, "{g}");
    }

    #[test]
    fn a_corrupt_image_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-0001_nsd-00001.png");
        std::fs::write(&path, b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
        let entries = vec![ImageEntry {
            path,
            row: 0,
            nsd_id: 1,
        }];
        let err = PixelCache::build_or_load(&entries, 8, &dir.path().join("c"))
            .err()
            .expect("corrupt image must fail")
            .to_string();
        assert!(
            err.contains("train-0001_nsd-00001.png") && err.contains("corrupt"),
            "{err}"
        );
    }
}
