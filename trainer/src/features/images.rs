//! The image pipeline: decode PNG/JPEG, resize to the backbone's input size (no crop,
//! as METHOD.md), cache the decoded pixels on disk, and hand out normalized batches.
//!
//! Pixels are cached as uint8 [N, 3, S, S] in one .npy per (image list, size): a
//! quarter of float32's size, readable from Python, and epochs never decode again.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use image::imageops::FilterType;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array4;
use ndarray_npy::ReadNpyExt;
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

/// Decoded, resized pixels of an image list, uint8 [N, 3, S, S].
pub struct PixelCache {
    pub size: u32,
    pub pixels: Array4<u8>,
    pub path: PathBuf,
}

impl PixelCache {
    /// Loads the cache for `entries` at `size` from `cache_dir`, or decodes every image
    /// (in parallel, with a progress bar) and writes it. The key covers names, file
    /// sizes and modification times, so an edited image invalidates it.
    pub fn build_or_load(entries: &[ImageEntry], size: u32, cache_dir: &Path) -> Result<Self> {
        let key = cache_key(entries, size)?;
        let path = cache_dir.join(format!("{key}.npy"));
        if path.exists() {
            let file = std::fs::File::open(&path).map_err(|e| DataError::io(&path, e))?;
            match Array4::<u8>::read_npy(std::io::BufReader::new(file)) {
                Ok(pixels) if pixels.dim() == (entries.len(), 3, size as usize, size as usize) => {
                    tracing::debug!(path = %path.display(), "pixel cache hit");
                    return Ok(PixelCache { size, pixels, path });
                }
                // A cache cut short by a killed run is rebuilt, not trusted.
                _ => tracing::warn!(path = %path.display(), "ignoring unreadable pixel cache"),
            }
        }
        let pixels = decode_all(entries, size)?;
        std::fs::create_dir_all(cache_dir).map_err(|e| DataError::io(cache_dir, e))?;
        let tmp = vcl_dataset::paths::partial(&path);
        vcl_dataset::npy::write(&tmp, &pixels)?;
        std::fs::rename(&tmp, &path).map_err(|e| DataError::io(&path, e))?;
        Ok(PixelCache { size, pixels, path })
    }

    pub fn len(&self) -> usize {
        self.pixels.dim().0
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// float32 [B, 3, S, S] in [0, 1] for `rows`, on `device`.
    pub fn batch_unit(&self, rows: &[usize], device: Device) -> Tensor {
        let s = self.size as i64;
        let plane = (3 * s * s) as usize;
        let mut buf = Vec::with_capacity(rows.len() * plane);
        let flat = self
            .pixels
            .as_slice()
            .expect("pixel cache is standard layout: built or read that way");
        for &r in rows {
            buf.extend_from_slice(&flat[r * plane..(r + 1) * plane]);
        }
        Tensor::from_slice(&buf)
            .view([rows.len() as i64, 3, s, s])
            .to_device(device)
            .to_kind(Kind::Float)
            / 255.0
    }

    /// float32 [B, 3, S, S], ImageNet-normalized: what torchvision backbones expect.
    pub fn batch(&self, rows: &[usize], device: Device) -> Tensor {
        normalize(&self.batch_unit(rows, device))
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

fn decode_all(entries: &[ImageEntry], size: u32) -> Result<Array4<u8>> {
    let s = size as usize;
    let plane = 3 * s * s;
    let mut flat = vec![0u8; entries.len() * plane];
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
        let handles: Vec<_> = flat
            .chunks_mut(per * plane)
            .zip(entries.chunks(per))
            .map(|(out, ents)| {
                let bar = bar.clone();
                scope.spawn(move || -> Result<()> {
                    for (dst, e) in out.chunks_mut(plane).zip(ents) {
                        dst.copy_from_slice(&to_chw(&decode(&e.path)?, size));
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
    result?;
    Array4::from_shape_vec((entries.len(), 3, s, s), flat)
        .map_err(|e| DataError::Invalid(format!("pixel buffer shape: {e}")))
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
        assert_eq!(a.pixels, b.pixels);
        let x = a.batch(&[0], Device::Cpu);
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
