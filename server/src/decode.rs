//! Untrusted bytes to model input, with every bound checked before memory is spent:
//! PNG/JPEG images (base64 in JSON, or raw bytes from multipart uploads) whose size is
//! read from the header and refused before decoding when over the pixel limit, then
//! resized as the manifest says ([`Preprocess`]: filter, crop, value range) to RGB
//! [3, H, W]; float32 .npy tensors in and out; and the finite-and-in-range check of
//! tensors that clients send as numbers.

use std::io::Cursor;
use std::time::Instant;

use base64::Engine;
use image::imageops::FilterType;
use vcl_contract::manifest::{InputSpec, ResizeFilter};

use crate::error::ServerError;

/// How the manifest says an image becomes input: resized to `height` x `width` with
/// `filter`, the centred square cut out first when `crop`, 8-bit values mapped
/// linearly onto `range`.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    pub height: u32,
    pub width: u32,
    pub filter: FilterType,
    pub crop: bool,
    pub range: [f32; 2],
}

impl Preprocess {
    pub fn of(input: &InputSpec) -> Self {
        let filter = match input.resize.filter() {
            ResizeFilter::Nearest => FilterType::Nearest,
            ResizeFilter::Triangle => FilterType::Triangle,
            ResizeFilter::CatmullRom => FilterType::CatmullRom,
            ResizeFilter::Gaussian => FilterType::Gaussian,
            ResizeFilter::Lanczos3 => FilterType::Lanczos3,
        };
        Preprocess {
            height: input.height,
            width: input.width,
            filter,
            crop: input.resize.crop,
            range: input.value_range,
        }
    }
}

/// What one image may cost: checked from its header, before decoding.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    pub max_side: u32,
    pub max_pixels: u64,
}

/// Decodes base64 strings (data URLs accepted) to bytes.
pub fn base64_files(b64: &[String]) -> Result<Vec<Vec<u8>>, ServerError> {
    b64.iter()
        .enumerate()
        .map(|(index, s)| {
            let s = s.split_once(";base64,").map_or(s.as_str(), |(_, d)| d);
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|e| ServerError::BadBase64 {
                    index,
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// Decodes PNG/JPEG files to float32 [n, 3, h, w]. Past `deadline` it stops between
/// images (the request has been answered 503 by then).
pub fn files_to_pixels<B: AsRef<[u8]>>(
    files: &[B],
    pre: &Preprocess,
    limits: ImageLimits,
    deadline: Option<Instant>,
) -> Result<Vec<f32>, ServerError> {
    let plane = (pre.height * pre.width) as usize;
    let mut out = Vec::with_capacity(files.len() * 3 * plane);
    let [lo, hi] = pre.range;
    let scale = (hi - lo) / 255.0;
    for (index, bytes) in files.iter().enumerate() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(ServerError::Timeout { ms: 0 });
        }
        let rgb = decode_one(bytes.as_ref(), index, limits)?;
        let rgb = if pre.crop {
            let side = rgb.width().min(rgb.height());
            let (x, y) = ((rgb.width() - side) / 2, (rgb.height() - side) / 2);
            image::imageops::crop_imm(&rgb, x, y, side, side).to_image()
        } else {
            rgb
        };
        let resized = if rgb.width() == pre.width && rgb.height() == pre.height {
            rgb
        } else {
            image::imageops::resize(&rgb, pre.width, pre.height, pre.filter)
        };
        let start = out.len();
        out.resize(start + 3 * plane, 0.0);
        let dst = &mut out[start..];
        for (i, p) in resized.pixels().enumerate() {
            for c in 0..3 {
                dst[c * plane + i] = lo + p[c] as f32 * scale;
            }
        }
    }
    Ok(out)
}

fn decode_one(
    bytes: &[u8],
    index: usize,
    limits: ImageLimits,
) -> Result<image::RgbImage, ServerError> {
    let not_image = |reason: String| ServerError::NotAnImage { index, reason };
    let too_large = |reason: String| ServerError::ImageTooLarge { index, reason };
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| not_image(e.to_string()))?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
        Some(f) => return Err(not_image(format!("{f:?} images are not accepted"))),
        None => return Err(not_image("unrecognized format".into())),
    }
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    // 16-bit RGBA is the most a PNG or JPEG decodes to per pixel.
    l.max_alloc = Some(limits.max_pixels.saturating_mul(8));
    reader.limits(l);
    let decoder = reader.into_decoder().map_err(|e| match e {
        image::ImageError::Limits(l) => {
            too_large(format!("{l} (sides up to {} px)", limits.max_side))
        }
        e => not_image(e.to_string()),
    })?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    let pixels = w as u64 * h as u64;
    if pixels > limits.max_pixels {
        return Err(too_large(format!(
            "{w}x{h} is {pixels} pixels; the limit is {} (--max-image-pixels)",
            limits.max_pixels
        )));
    }
    if pixels == 0 {
        return Err(not_image(format!("{w}x{h} has no pixels")));
    }
    let img = image::DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(l) => too_large(l.to_string()),
        e => not_image(e.to_string()),
    })?;
    Ok(img.to_rgb8())
}

/// Refuses NaN, infinities, and values outside `range` (a little slack for rounding):
/// a model given them answers numbers that mean nothing.
pub fn check_values(values: &[f32], range: [f32; 2]) -> Result<(), ServerError> {
    let [lo, hi] = range;
    let slack = (hi - lo) * 1e-3;
    let bad = values
        .iter()
        .position(|v| !v.is_finite() || *v < lo - slack || *v > hi + slack);
    match bad {
        None => Ok(()),
        Some(i) if !values[i].is_finite() => Err(ServerError::OutOfRange(format!(
            "value {i} is {}; inputs must be finite",
            values[i]
        ))),
        Some(i) => Err(ServerError::OutOfRange(format!(
            "value {i} is {}; this model takes pixel values in [{lo}, {hi}] (RGB / 255; \
             it normalizes inside the graph, so do not subtract a mean)",
            values[i]
        ))),
    }
}

/// A float32 .npy array: (shape, values in C order).
pub fn read_npy(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), ServerError> {
    let bad = |s: String| ServerError::BadTensor(s);
    let npy = vcl_contract::npy::Npy::parse(bytes).map_err(bad)?;
    let field = |key: &str| npy.field(key);
    let descr = npy
        .descr()
        .ok_or_else(|| bad("no descr in the .npy header".into()))?;
    if descr != "<f4" {
        return Err(bad(format!(
            "dtype '{descr}': send float32 little-endian ('<f4')"
        )));
    }
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err(bad("Fortran-order arrays are not supported".into()));
    }
    let shape = npy.shape().map_err(bad)?;
    let data = npy.body;
    // A shape's product can overflow (found by fuzz/fuzz_targets/npy.rs): such a shape
    // is too large for any body.
    let needed = shape
        .iter()
        .try_fold(4usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    if data.len() != needed {
        return Err(bad(format!(
            "shape {shape:?} needs {needed} bytes of data, the body has {}",
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
        let mut f8 = bytes.clone();
        let at = f8.windows(3).position(|w| w == b"<f4").unwrap();
        f8[at + 2] = b'8';
        let e = read_npy(&f8).unwrap_err();
        assert!(e.to_string().contains("'<f8'"), "{e}");
        assert!(matches!(
            read_npy(&bytes[..bytes.len() - 4]),
            Err(ServerError::BadTensor(_))
        ));
        assert!(matches!(
            read_npy(b"hello world"),
            Err(ServerError::BadTensor(_))
        ));
        // A shape whose product overflows (found by fuzzing) is refused, not wrapped.
        let huge = write_npy(&[1 << 62, 8], &[]);
        let e = read_npy(&huge).unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
    }

    fn pre(size: u32) -> Preprocess {
        Preprocess::of(&InputSpec::rgb_square(size))
    }

    const LIMITS: ImageLimits = ImageLimits {
        max_side: 100,
        max_pixels: 10_000,
    };

    fn png(img: &image::DynamicImage) -> Vec<u8> {
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png
    }

    #[test]
    fn images_decode_resize_and_refuse() {
        let img = image::RgbImage::from_pixel(20, 10, image::Rgb([255, 0, 51]));
        let png = png(&img.into());
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        let files = base64_files(std::slice::from_ref(&b64)).unwrap();
        let px = files_to_pixels(&files, &pre(4), LIMITS, None).unwrap();
        assert_eq!(px.len(), 48);
        assert!((px[0] - 1.0).abs() < 1e-6 && px[16].abs() < 1e-6 && (px[32] - 0.2).abs() < 1e-6);
        let e = base64_files(&["!!!".into()]).unwrap_err();
        assert!(matches!(e, ServerError::BadBase64 { index: 0, .. }), "{e}");
        let e = files_to_pixels(&[&png[..], b"not an image at all"], &pre(4), LIMITS, None)
            .unwrap_err();
        assert!(matches!(e, ServerError::NotAnImage { index: 1, .. }), "{e}");
        let small = ImageLimits {
            max_side: 16,
            max_pixels: 10_000,
        };
        let e = files_to_pixels(&[&png], &pre(4), small, None).unwrap_err();
        assert!(
            matches!(e, ServerError::ImageTooLarge { index: 0, .. }),
            "{e}"
        );
        let few = ImageLimits {
            max_side: 100,
            max_pixels: 199,
        };
        let e = files_to_pixels(&[&png], &pre(4), few, None).unwrap_err();
        assert!(e.to_string().contains("200 pixels"), "{e}");
        let past = Some(Instant::now());
        let e = files_to_pixels(&[&png], &pre(4), LIMITS, past).unwrap_err();
        assert!(matches!(e, ServerError::Timeout { .. }), "{e}");
    }

    /// A 16-bit RGBA PNG of 8192 x 8192 zeros is half a megabyte and decodes to 512 MiB:
    /// it is refused from its header, in microseconds, without that allocation.
    #[test]
    fn a_decompression_bomb_is_refused_from_its_header() {
        let bytes = crate::testing::png_bomb(8192);
        assert!(bytes.len() < 2 << 20, "{} bytes", bytes.len());
        let limits = ImageLimits {
            max_side: 8192,
            max_pixels: 4096 * 4096,
        };
        let t = Instant::now();
        let e = files_to_pixels(&[&bytes], &pre(8), limits, None).unwrap_err();
        assert!(
            matches!(e, ServerError::ImageTooLarge { index: 0, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("67108864 pixels"), "{e}");
        assert!(t.elapsed().as_millis() < 500, "{:?}", t.elapsed());
    }

    /// The manifest's preprocessing is what the decoder does: crop, filter, range.
    #[test]
    fn decoding_follows_the_manifest() {
        // Left half black, right half white, 20 x 10.
        let img =
            image::RgbImage::from_fn(20, 10, |x, _| image::Rgb([if x < 10 { 0 } else { 255 }; 3]));
        let bytes = png(&img.into());
        let mut input = InputSpec::rgb_square(2);
        input.resize.filter = "nearest".into();
        let stretched = files_to_pixels(&[&bytes], &Preprocess::of(&input), LIMITS, None).unwrap();
        assert_eq!(&stretched[..4], &[0.0, 1.0, 0.0, 1.0]);
        input.resize.crop = true;
        input.value_range = [-1.0, 1.0];
        let cropped = files_to_pixels(&[&bytes], &Preprocess::of(&input), LIMITS, None).unwrap();
        // The centred 10 x 10 square spans x 5..15: half black, half white.
        assert_eq!(&cropped[..4], &[-1.0, 1.0, -1.0, 1.0]);
    }

    #[test]
    fn non_finite_and_out_of_range_values_are_refused() {
        assert!(check_values(&[0.0, 0.5, 1.0, 1.0005], [0.0, 1.0]).is_ok());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.1, -0.2, 255.0] {
            let e = check_values(&[0.5, bad], [0.0, 1.0]).unwrap_err();
            assert!(
                matches!(e, ServerError::OutOfRange(_)) && e.to_string().contains("value 1"),
                "{e}"
            );
        }
    }
}
