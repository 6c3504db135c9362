//! Stimuli: crops of real photos, mixed with "dead leaves" images.
//!
//! An image is a pure function of (seed, NSD id, photo set), so an NSD id that two
//! subjects share (NSD's shared1000) gives the same picture to both without keeping it.

use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::rng::{stream, TAG_IMAGE};
use super::SynthError;

/// Photos must be larger than this on their short side.
pub const MIN_PHOTO_SIDE: u32 = 128;
/// Crops take this range of the photo's short side.
pub const CROP_SCALE: (f64, f64) = (0.25, 1.0);
/// Share of stimuli that are dead-leaves images instead of photo crops.
pub const DEAD_LEAVES_FRACTION: f64 = 0.1;

/// The decoded photos stimuli are cut from, in file-name order.
pub struct PhotoSet {
    pub dir: PathBuf,
    pub names: Vec<String>,
    /// SHA-256 of each photo file: what the stimuli were cut from, independent of
    /// where the folder lives.
    pub sha256: Vec<String>,
    pub photos: Vec<RgbImage>,
    /// Files that were not usable photos, with why.
    pub skipped: Vec<(String, String)>,
}

impl PhotoSet {
    /// Reads every decodable PNG/JPEG with a short side above [`MIN_PHOTO_SIDE`].
    /// Grey photos become RGB; anything else in the folder is skipped.
    pub fn load(dir: &Path) -> Result<Self, SynthError> {
        let entries = std::fs::read_dir(dir).map_err(|e| SynthError::Photos {
            path: dir.to_path_buf(),
            reason: format!("cannot read the folder: {e}"),
        })?;
        let mut paths: Vec<PathBuf> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SynthError::Photos {
                path: dir.to_path_buf(),
                reason: format!("cannot list the folder: {e}"),
            })?;
            let path = entry.path();
            if path.is_file() {
                paths.push(path);
            }
        }
        // read_dir's order is the file system's: sort so the photo index an image
        // draws means the same photo on every machine.
        paths.sort();

        let mut set = PhotoSet {
            dir: dir.to_path_buf(),
            names: Vec::new(),
            sha256: Vec::new(),
            photos: Vec::new(),
            skipped: Vec::new(),
        };
        for path in paths {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match decode_photo(&path) {
                Ok((img, digest)) => {
                    set.names.push(name);
                    set.sha256.push(digest);
                    set.photos.push(img);
                }
                Err(why) => {
                    tracing::debug!("skipping {}: {why}", path.display());
                    set.skipped.push((name, why));
                }
            }
        }
        if set.photos.is_empty() {
            return Err(SynthError::Photos {
                path: dir.to_path_buf(),
                reason: format!(
                    "no usable photo (PNG or JPEG, short side > {MIN_PHOTO_SIDE} px) among {} files",
                    set.skipped.len()
                ),
            });
        }
        Ok(set)
    }
}

fn decode_photo(path: &Path) -> Result<(RgbImage, String), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    match reader.format() {
        Some(image::ImageFormat::Png) | Some(image::ImageFormat::Jpeg) => {}
        _ => return Err("not a PNG or JPEG file".into()),
    }
    let img = reader.decode().map_err(|e| e.to_string())?;
    let short = img.width().min(img.height());
    if short <= MIN_PHOTO_SIDE {
        return Err(format!("short side {short} px is too small"));
    }
    use sha2::Digest;
    Ok((img.to_rgb8(), hex::encode(sha2::Sha256::digest(&bytes))))
}

/// The stimulus with this NSD id: a random crop (scale, position, mirror) of a photo
/// or, for about one image in ten, a dead-leaves image.
pub fn make_image(photos: &PhotoSet, seed: u64, nsd_id: usize, size: u32) -> RgbImage {
    let mut rng = stream(seed, &[TAG_IMAGE, nsd_id as u64]);
    if rng.random_bool(DEAD_LEAVES_FRACTION) {
        return dead_leaves(&mut rng, size);
    }
    let photo = &photos.photos[rng.random_range(0..photos.photos.len())];
    let (w, h) = photo.dimensions();
    let short = w.min(h) as f64;
    let scale = rng.random_range(CROP_SCALE.0..=CROP_SCALE.1);
    let side = ((scale * short).round() as u32).clamp(8, w.min(h));
    let x0 = rng.random_range(0..=w - side);
    let y0 = rng.random_range(0..=h - side);
    let mirror = rng.random_bool(0.5);
    let mut crop = imageops::crop_imm(photo, x0, y0, side, side).to_image();
    if mirror {
        imageops::flip_horizontal_in_place(&mut crop);
    }
    // Triangle widens with the scale factor when shrinking, so large crops are
    // low-passed rather than aliased.
    imageops::resize(&crop, size, size, FilterType::Triangle)
}

/// Dead leaves: opaque disks with power-law radii (density ~ r^-3, i.e. scale
/// invariant), dropped one on top of another; they share natural images' 1/f spectrum
/// and occlusion statistics.
pub fn dead_leaves(rng: &mut ChaCha8Rng, size: u32) -> RgbImage {
    let s = size as f64;
    let (rmin, rmax) = (0.01 * s, 0.4 * s);
    let (a, b) = (rmin.powi(-2), rmax.powi(-2));
    // Mean disk area is 2 pi rmin^2 ln(rmax/rmin) / (1 - (rmin/rmax)^2); enough disks to
    // cover the image about five times leaves under 1% of the background showing.
    let mean_area = 2.0 * std::f64::consts::PI * rmin * rmin * (rmax / rmin).ln() / (1.0 - b / a);
    let n = (5.0 * s * s / mean_area).ceil() as usize;
    let mut img = RgbImage::from_pixel(size, size, random_colour(rng));
    for _ in 0..n {
        let u: f64 = rng.random();
        let r = (a - u * (a - b)).powf(-0.5);
        let cx = rng.random_range(-r..s + r);
        let cy = rng.random_range(-r..s + r);
        let colour = random_colour(rng);
        let x0 = (cx - r).floor().max(0.0) as u32;
        let x1 = ((cx + r).ceil().min(s) as u32).min(size);
        let y0 = (cy - r).floor().max(0.0) as u32;
        let y1 = ((cy + r).ceil().min(s) as u32).min(size);
        let r2 = r * r;
        for y in y0..y1 {
            let dy = y as f64 + 0.5 - cy;
            for x in x0..x1 {
                let dx = x as f64 + 0.5 - cx;
                if dx * dx + dy * dy <= r2 {
                    img.put_pixel(x, y, colour);
                }
            }
        }
    }
    img
}

fn random_colour(rng: &mut ChaCha8Rng) -> Rgb<u8> {
    // Channels vary around a common luminance, as surface colours in photos do.
    let lum: f64 = rng.random_range(0.05..0.95);
    let mut c = [0u8; 3];
    for v in c.iter_mut() {
        let x: f64 = lum + rng.random_range(-0.2..0.2);
        *v = (x.clamp(0.0, 1.0) * 255.0).round() as u8;
    }
    Rgb(c)
}
