//! The .npy framing both sides parse: magic, version, header, body. The server reads
//! tensors clients send as .npy; the data layer reads the Algonauts release's pickled
//! ROI mappings. One parser of the header, so they agree on what a .npy file is.

/// A .npy file split into its header (the Python dict literal) and its data.
#[derive(Debug, Clone, Copy)]
pub struct Npy<'a> {
    pub header: &'a str,
    pub body: &'a [u8],
}

impl<'a> Npy<'a> {
    /// Splits `bytes` (versions 1.0 to 3.0); the error says what is wrong with them.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err("not a .npy file (no \\x93NUMPY magic)".into());
        }
        let (len, start): (usize, usize) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            v => return Err(format!(".npy version {v} is not supported")),
        };
        let header = start
            .checked_add(len)
            .and_then(|end| bytes.get(start..end))
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or_else(|| "truncated .npy header".to_string())?;
        Ok(Npy {
            header,
            body: &bytes[start + len..],
        })
    }

    /// The text after `'key':` in the header, e.g. `'<f4', ...` for `descr`.
    pub fn field(&self, key: &str) -> Option<&'a str> {
        let i = self.header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(self.header[i..].trim_start())
    }

    /// The shape tuple, `()` for a scalar.
    pub fn shape(&self) -> Result<Vec<usize>, String> {
        let txt = self
            .field("shape")
            .and_then(|s| s.strip_prefix('(')?.split(')').next())
            .ok_or_else(|| "no shape in the .npy header".to_string())?;
        txt.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape ({txt})")))
            .collect()
    }

    /// The dtype: `<f4`, `|O`, ...
    pub fn descr(&self) -> Option<&'a str> {
        self.field("descr")
            .and_then(|s| s.strip_prefix('\'')?.split('\'').next())
    }
}

#[cfg(test)]
mod tests {
    use super::Npy;

    #[test]
    fn splits_header_and_body() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend([1, 2, 3, 4, 5, 6, 7, 8]);
        let n = Npy::parse(&bytes).unwrap();
        assert_eq!(n.descr(), Some("<f4"));
        assert_eq!(n.shape(), Ok(vec![2]));
        assert_eq!(n.body.len(), 8);
        assert!(Npy::parse(&bytes[..12]).unwrap_err().contains("truncated"));
        assert!(Npy::parse(b"PK\x03\x04 not npy")
            .unwrap_err()
            .contains("magic"));
        let mut v9 = bytes.clone();
        v9[6] = 9;
        assert!(Npy::parse(&v9).unwrap_err().contains("version 9"));
    }
}
