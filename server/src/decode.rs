//! Request payloads to model input: PNG/JPEG images (base64 in JSON, or raw bytes from
//! multipart uploads) resized as the manifest says (bilinear with antialiasing, the
//! image crate's Triangle filter, no crop, as the trainer resized its images) to
//! [0, 1] RGB, and float32 .npy tensors in and out.

use std::io::Cursor;

use base64::Engine;
use image::imageops::FilterType;

use crate::error::ServerError;

/// Decodes base64 PNG/JPEG images to float32 [n, 3, h, w] in [0, 1].
pub fn images(b64: &[String], h: u32, w: u32, max_side: u32) -> Result<Vec<f32>, ServerError> {
    let files = b64
        .iter()
        .enumerate()
        .map(|(index, s)| {
            // Accept data URLs: "data:image/png;base64,...".
            let s = s.split_once(";base64,").map_or(s.as_str(), |(_, d)| d);
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|e| ServerError::BadBase64 {
                    index,
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    files_to_pixels(&files, h, w, max_side)
}

/// Decodes PNG/JPEG files (raw bytes, as multipart uploads carry them) to float32
/// [n, 3, h, w] in [0, 1].
pub fn files_to_pixels<B: AsRef<[u8]>>(
    files: &[B],
    h: u32,
    w: u32,
    max_side: u32,
) -> Result<Vec<f32>, ServerError> {
    let plane = (h * w) as usize;
    let mut out = Vec::with_capacity(files.len() * 3 * plane);
    for (index, bytes) in files.iter().enumerate() {
        let rgb = decode_one(bytes.as_ref(), index, max_side)?;
        let resized = if rgb.width() == w && rgb.height() == h {
            rgb
        } else {
            image::imageops::resize(&rgb, w, h, FilterType::Triangle)
        };
        let start = out.len();
        out.resize(start + 3 * plane, 0.0);
        let dst = &mut out[start..];
        for (i, p) in resized.pixels().enumerate() {
            for c in 0..3 {
                dst[c * plane + i] = p[c] as f32 / 255.0;
            }
        }
    }
    Ok(out)
}

fn decode_one(bytes: &[u8], index: usize, max_side: u32) -> Result<image::RgbImage, ServerError> {
    let not_image = |reason: String| ServerError::NotAnImage { index, reason };
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| not_image(e.to_string()))?;
    if reader.format().is_none() {
        return Err(not_image("unrecognized format".into()));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(l) => ServerError::ImageTooLarge {
            index,
            reason: format!("{l} (sides up to {max_side} px)"),
        },
        e => not_image(e.to_string()),
    })?;
    Ok(img.to_rgb8())
}

/// A float32 .npy array: (shape, values in C order).
pub fn read_npy(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), ServerError> {
    let bad = |s: String| ServerError::BadTensor(s);
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!(".npy version {v} is not supported"))),
    };
    let header = bytes
        .get(hstart..hstart + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated .npy header".into()))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[i..].trim_start())
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\'')?.split('\'').next())
        .ok_or_else(|| bad("no descr in the .npy header".into()))?;
    if descr != "<f4" {
        return Err(bad(format!(
            "dtype '{descr}': send float32 little-endian ('<f4')"
        )));
    }
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err(bad("Fortran-order arrays are not supported".into()));
    }
    let shape_txt = field("shape")
        .and_then(|s| s.strip_prefix('(')?.split(')').next())
        .ok_or_else(|| bad("no shape in the .npy header".into()))?;
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(format!("bad shape ({shape_txt})")))
        })
        .collect::<Result<_, _>>()?;
    let data = &bytes[hstart + hlen..];
    let count: usize = shape.iter().product();
    if data.len() != count * 4 {
        return Err(bad(format!(
            "shape {shape:?} needs {} bytes of data, the body has {}",
            count * 4,
            data.len()
        )));
    }
    let values = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((shape, values))
}

/// A float32 .npy file (version 1.0) of `shape`.
pub fn write_npy(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // magic (6) + version (2) + length (2) + header + '\n', padded to 64 bytes.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + values.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_and_refusals() {
        let bytes = write_npy(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        assert_eq!((bytes.len() - 6 * 4) % 64, 0);
        let (shape, v) = read_npy(&bytes).unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(v, vec![1., 2., 3., 4., 5., 6.]);
        let f8 = String::from_utf8_lossy(&bytes).replace("<f4", "<f8");
        assert!(matches!(
            read_npy(f8.as_bytes()),
            Err(ServerError::BadTensor(_))
        ));
        assert!(matches!(
            read_npy(&bytes[..bytes.len() - 4]),
            Err(ServerError::BadTensor(_))
        ));
        assert!(matches!(
            read_npy(b"hello world"),
            Err(ServerError::BadTensor(_))
        ));
    }

    #[test]
    fn images_decode_resize_and_refuse() {
        let img = image::RgbImage::from_pixel(20, 10, image::Rgb([255, 0, 51]));
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        let px = images(std::slice::from_ref(&b64), 4, 4, 100).unwrap();
        assert_eq!(px.len(), 48);
        assert!((px[0] - 1.0).abs() < 1e-6 && px[16].abs() < 1e-6 && (px[32] - 0.2).abs() < 1e-6);
        let e = images(&["!!!".into()], 4, 4, 100).unwrap_err();
        assert!(matches!(e, ServerError::BadBase64 { index: 0, .. }), "{e}");
        let junk = base64::engine::general_purpose::STANDARD.encode(b"not an image at all");
        let e = images(&[b64.clone(), junk], 4, 4, 100).unwrap_err();
        assert!(matches!(e, ServerError::NotAnImage { index: 1, .. }), "{e}");
        let e = images(&[b64], 4, 4, 16).unwrap_err();
        assert!(
            matches!(e, ServerError::ImageTooLarge { index: 0, .. }),
            "{e}"
        );
    }
}
