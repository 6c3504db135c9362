//! Tap features of a backbone over a set of images: what PCA and ridge consume.
//!
//! One forward pass per batch serves every requested tap; the network runs in eval
//! mode without autograd, on the backbone's device (build it on
//! `Device::cuda_if_available()` to use a GPU). Each image's tap output is flattened
//! to one float32 row, so a tap yields an [N, D] matrix in the order of `rows`.
//!
//! Early conv taps are huge (AlexNet features.2 at 224 px is 64x27x27 = 46656 dims);
//! `max_dim` average-pools such maps to the largest square grid g x g with
//! C*g*g <= max_dim, and the result records that it did.
//!
//! Results are cached on disk, one .npy (plus a .json describing it) per tap, keyed by
//! the backbone's weights hash, the tap, the pooling knob, the pixel cache (which
//! names the dataset, image list and input size) and the rows. With a cache, each
//! batch's rows go straight to their tap's file and a caller loads one tap at a time
//! ([`TapFeatures::tensor`]): at NSD size ten MobileNetV2 taps are 5 GB, one is 0.5 GB.

pub mod backbones;
pub mod images;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array2;
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::features::backbones::{Backbone, BackboneError};
use crate::features::images::PixelCache;

/// Bump when what a cached feature file means changes (pooling rule, layout).
const FEATURES_VERSION: &str = "features-v1";

/// How to extract.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// Images per forward pass.
    pub batch_size: usize,
    /// Cap on a conv tap's dimension per image (None: keep full maps).
    pub max_dim: Option<usize>,
    /// Where cached features live (None: no cache).
    pub cache_dir: Option<PathBuf>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            batch_size: 64,
            max_dim: None,
            cache_dir: None,
        }
    }
}

/// What was done to a tap's output before flattening: the manifest's type, so that an
/// export records exactly what the features did.
pub use vcl_contract::manifest::Pooling;

/// The pooling `max_dim` calls for on a tap whose per-image output has `map_shape`
/// ([C, H, W] for conv taps, [D] for vector taps, which are never pooled).
pub fn pooling_for(map_shape: &[i64], max_dim: Option<usize>) -> Pooling {
    let (Some(max_dim), [c, h, w]) = (max_dim, map_shape) else {
        return Pooling::None;
    };
    let (c, h, w) = (*c, *h, *w);
    if c * h * w <= max_dim as i64 {
        return Pooling::None;
    }
    // Largest g with c*g*g <= max_dim; at least 1 (a single pooled vector per channel,
    // even when C alone exceeds the cap), at most the map's own size.
    let mut g = ((max_dim as f64 / c as f64).sqrt().floor() as i64).max(1);
    while g > 1 && c * g * g > max_dim as i64 {
        g -= 1;
    }
    while c * (g + 1) * (g + 1) <= max_dim as i64 {
        g += 1;
    }
    Pooling::AdaptiveAvg {
        grid: g.min(h.min(w)),
    }
}

/// How a conv tap's map is pooled before flattening, as asked for: `vcl fit
/// --pool-grids` makes each choice a candidate that the CV inside the training split
/// weighs against the others (a coarse grid averages noise away when images are few).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GridChoice {
    /// The largest grid that fits `max_dim` (the map itself if it already fits).
    Cap,
    /// The whole map, whatever its size.
    Full,
    /// Average-pooled to g x g (the map itself if it is no larger).
    Grid(i64),
}

impl GridChoice {
    /// The pooling this choice makes of a tap whose per-image output has `map_shape`.
    pub fn resolve(self, map_shape: &[i64], max_dim: Option<usize>) -> Pooling {
        match (self, map_shape) {
            (GridChoice::Cap, _) => pooling_for(map_shape, max_dim),
            (GridChoice::Grid(g), [_, h, w]) if g < (*h).min(*w) => {
                Pooling::AdaptiveAvg { grid: g.max(1) }
            }
            _ => Pooling::None,
        }
    }

    /// The choice that reproduces `pooling` on any map (what evaluation and export ask
    /// for once a fit has resolved it).
    pub fn of(pooling: Pooling) -> GridChoice {
        match pooling {
            Pooling::None => GridChoice::Full,
            Pooling::AdaptiveAvg { grid } => GridChoice::Grid(grid),
        }
    }
}

impl std::fmt::Display for GridChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GridChoice::Cap => f.write_str("cap"),
            GridChoice::Full => f.write_str("full"),
            GridChoice::Grid(g) => write!(f, "{g}"),
        }
    }
}

impl std::str::FromStr for GridChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "cap" => Ok(GridChoice::Cap),
            "full" => Ok(GridChoice::Full),
            other => match other.parse::<i64>() {
                Ok(g) if g >= 1 => Ok(GridChoice::Grid(g)),
                _ => Err(format!(
                    "pooling grid {other:?}: expected cap, full or a grid size of at least 1"
                )),
            },
        }
    }
}

impl serde::Serialize for GridChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for GridChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One feature matrix to extract: a tap, pooled as `grid` says.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeatureSpec {
    pub tap: String,
    pub grid: GridChoice,
}

impl FeatureSpec {
    pub fn new(tap: &str, grid: GridChoice) -> FeatureSpec {
        FeatureSpec {
            tap: tap.to_string(),
            grid,
        }
    }
}

/// Describes one tap's feature matrix.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TapInfo {
    pub tap: String,
    /// Per-image output shape before pooling ([C, H, W] or [D]).
    pub map_shape: Vec<i64>,
    pub pooling: Pooling,
    /// Columns of the feature matrix.
    pub dim: usize,
    /// Rows of the feature matrix (images).
    pub images: usize,
    pub weights_hash: String,
    /// The pixel cache the images came from.
    pub pixels: PathBuf,
}

/// Where a tap's matrix is.
#[derive(Clone, Debug)]
pub enum FeatureData {
    /// Extracted without a cache directory.
    Memory(Array2<f32>),
    /// The cache file (float32 .npy, [N, D]).
    File(PathBuf),
}

/// One tap's features, float32 [N, D], row i for `rows[i]`.
#[derive(Clone, Debug)]
pub struct TapFeatures {
    pub info: TapInfo,
    pub data: FeatureData,
    /// Read from the cache rather than computed.
    pub from_cache: bool,
}

impl TapFeatures {
    /// The cache file, if a cache directory was given.
    pub fn cache_path(&self) -> Option<&Path> {
        match &self.data {
            FeatureData::File(p) => Some(p),
            FeatureData::Memory(_) => None,
        }
    }

    /// The matrix as a float32 CPU tensor [N, D], read from its file in blocks of
    /// rows, so that only the tensor itself is ever whole in memory.
    pub fn tensor(&self) -> Result<Tensor, BackboneError> {
        let (n, d) = (self.info.images, self.info.dim);
        let path = match &self.data {
            FeatureData::Memory(a) => {
                let flat = a.as_standard_layout();
                let slice = flat.as_slice().ok_or_else(|| {
                    BackboneError::Invalid("feature matrix is not contiguous".into())
                })?;
                return Ok(Tensor::from_slice(slice).view([n as i64, d as i64]));
            }
            FeatureData::File(p) => p,
        };
        let cache_err = |reason: String| BackboneError::FeatureCache {
            path: path.clone(),
            reason,
        };
        let layout = check_layout(path, n, d).map_err(cache_err)?;
        let file = std::fs::File::open(path).map_err(|e| cache_err(e.to_string()))?;
        let out = Tensor::empty([n as i64, d as i64], (Kind::Float, tch::Device::Cpu));
        let block_rows = ((8 << 20) / (4 * d).max(1)).clamp(1, n.max(1));
        let mut bytes = vec![0u8; block_rows * d * 4];
        for r0 in (0..n).step_by(block_rows) {
            let m = block_rows.min(n - r0);
            let buf = &mut bytes[..m * d * 4];
            file.read_exact_at(buf, layout.data_offset + (r0 * d * 4) as u64)
                .map_err(|e| cache_err(e.to_string()))?;
            let block = Tensor::f_from_data_size(buf, &[m as i64, d as i64], Kind::Float)
                .map_err(|e| cache_err(e.to_string()))?;
            out.narrow(0, r0 as i64, m as i64).copy_(&block);
        }
        Ok(out)
    }

    /// The matrix as an array (tests and tools; the pipeline uses [`Self::tensor`]).
    pub fn array(&self) -> Result<Array2<f32>, BackboneError> {
        match &self.data {
            FeatureData::Memory(a) => Ok(a.clone()),
            FeatureData::File(_) => {
                let t = self.tensor()?;
                let v: Vec<f32> = Vec::try_from(t.flatten(0, -1)).map_err(|e| {
                    BackboneError::Invalid(format!("features of {}: {e}", self.info.tap))
                })?;
                Array2::from_shape_vec((self.info.images, self.info.dim), v).map_err(|e| {
                    BackboneError::Invalid(format!("features of {}: {e}", self.info.tap))
                })
            }
        }
    }
}

/// The layout of a cached feature file, if it is a whole float32 [n, d] matrix.
fn check_layout(path: &Path, n: usize, d: usize) -> Result<vcl_dataset::npy::Layout, String> {
    let layout = vcl_dataset::npy::layout(path).map_err(|e| e.to_string())?;
    if layout.descr != "<f4" || layout.shape != [n, d] {
        return Err(format!(
            "holds {} {:?}, expected <f4 [{n}, {d}]",
            layout.descr, layout.shape
        ));
    }
    let have = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let want = layout.data_offset + (n * d * 4) as u64;
    if have != want {
        return Err(format!("{have} bytes where the header needs {want}"));
    }
    Ok(layout)
}

/// All requested taps, in the order asked.
#[derive(Clone, Debug)]
pub struct Extraction {
    pub taps: Vec<TapFeatures>,
    /// Images pushed through the network: 0 when every tap came from the cache.
    pub images_run: usize,
}

impl Extraction {
    /// The first matrix of `tap` (of the only one, when a tap was asked for once).
    pub fn get(&self, tap: &str) -> Option<&TapFeatures> {
        self.taps.iter().find(|t| t.info.tap == tap)
    }
}

/// Features of `specs` for images `rows` of `pixels`, float32 [rows.len(), D] each, in
/// the order asked (a repeated spec once).
pub fn extract(
    backbone: &Backbone,
    pixels: &PixelCache,
    rows: &[usize],
    specs: &[FeatureSpec],
    opts: &ExtractOptions,
) -> Result<Extraction, BackboneError> {
    let mut unique: Vec<&FeatureSpec> = Vec::new();
    for s in specs {
        backbone.tap_index(&s.tap)?;
        if !unique.contains(&s) {
            unique.push(s);
        }
    }
    if let Some(&bad) = rows.iter().find(|&&r| r >= pixels.len()) {
        return Err(BackboneError::Invalid(format!(
            "row {bad} is out of range: {} holds {} images",
            pixels.path.display(),
            pixels.len()
        )));
    }
    if rows.is_empty() || unique.is_empty() {
        return Err(BackboneError::Invalid(
            "feature extraction needs at least one row and one tap".into(),
        ));
    }
    let weights_hash = backbone.weights_hash();
    let key = CacheKey {
        weights_hash: &weights_hash,
        pixels,
        rows,
        max_dim: opts.max_dim,
    };

    let mut done: Vec<Option<TapFeatures>> = Vec::with_capacity(unique.len());
    for &spec in &unique {
        let cached = opts
            .cache_dir
            .as_deref()
            .and_then(|dir| read_cached(&key.path(dir, backbone, spec), rows.len()));
        done.push(cached);
    }
    let todo: Vec<&FeatureSpec> = unique
        .iter()
        .zip(&done)
        .filter(|(_, d)| d.is_none())
        .map(|(t, _)| *t)
        .collect();

    let mut images_run = 0;
    if !todo.is_empty() {
        let outputs: Vec<Output> = todo
            .iter()
            .map(|&spec| Output {
                spec,
                file: opts
                    .cache_dir
                    .as_deref()
                    .map(|dir| key.path(dir, backbone, spec)),
            })
            .collect();
        let computed = run(backbone, pixels, rows, &outputs, opts)?;
        images_run = rows.len();
        for (spec, c) in todo.iter().zip(computed) {
            let info = TapInfo {
                tap: spec.tap.clone(),
                map_shape: c.map_shape,
                pooling: c.pooling,
                dim: c.dim,
                images: rows.len(),
                weights_hash: weights_hash.clone(),
                pixels: pixels.path.clone(),
            };
            if let FeatureData::File(path) = &c.data {
                write_sidecar(path, &info)?;
            }
            if let Some(slot) = unique.iter().position(|u| u == spec) {
                done[slot] = Some(TapFeatures {
                    info,
                    data: c.data,
                    from_cache: false,
                });
            }
        }
    }
    let taps = done.into_iter().flatten().collect();
    Ok(Extraction { taps, images_run })
}

/// One tap's extraction result.
struct Computed {
    map_shape: Vec<i64>,
    pooling: Pooling,
    dim: usize,
    data: FeatureData,
}

/// Where one tap's rows go while the network runs.
enum Sink {
    Memory(Vec<f32>),
    /// The temporary file, renamed to `path` once whole.
    File {
        writer: vcl_dataset::npy::NpyWriter,
        tmp: PathBuf,
        path: PathBuf,
    },
}

/// A feature matrix to extract, and the cache file its rows go to (None: kept in
/// memory).
struct Output<'a> {
    spec: &'a FeatureSpec,
    file: Option<PathBuf>,
}

/// Runs the network over `rows` once for all `outputs`, each batch written to its
/// tap's file as it comes.
fn run(
    backbone: &Backbone,
    pixels: &PixelCache,
    rows: &[usize],
    outputs: &[Output],
    opts: &ExtractOptions,
) -> Result<Vec<Computed>, BackboneError> {
    let mut taps: Vec<&str> = Vec::new();
    for o in outputs {
        if !taps.contains(&o.spec.tap.as_str()) {
            taps.push(&o.spec.tap);
        }
    }
    let (batch_size, max_dim) = (opts.batch_size.max(1), opts.max_dim);
    let device = backbone.device();
    let n = rows.len();
    tracing::info!(
        arch = %backbone.arch(),
        taps = ?taps,
        images = n,
        ?device,
        "extracting features"
    );
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} {pos}/{len} images {wide_bar} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(format!("{} features", backbone.arch()));
    let start = Instant::now();

    // Each output reads the forward pass's result for its tap.
    let tap_of: Vec<usize> = outputs
        .iter()
        .map(|o| taps.iter().position(|t| *t == o.spec.tap).unwrap_or(0))
        .collect();
    let mut shapes: Vec<Option<(Vec<i64>, Pooling, usize)>> = vec![None; outputs.len()];
    let mut sinks: Vec<Option<Sink>> = (0..outputs.len()).map(|_| None).collect();
    let mut block: Vec<f32> = Vec::new();
    for chunk in rows.chunks(batch_size) {
        let x = pixels.batch(chunk, device)?;
        let outs = tch::no_grad(|| backbone.taps(&x, &taps, false))?;
        for (i, out) in tap_of.iter().map(|&t| &outs[t]).enumerate() {
            let map_shape = out.size()[1..].to_vec();
            let (_, pooling, _) = shapes[i].get_or_insert_with(|| {
                let pooling = outputs[i].spec.grid.resolve(&map_shape, max_dim);
                (map_shape, pooling, 0)
            });
            let flat = flatten(out, *pooling)?;
            let numel = flat.numel();
            let dim = numel / chunk.len();
            if let Some(s) = shapes[i].as_mut() {
                s.2 = dim;
            }
            block.resize(numel, 0.0);
            flat.f_copy_data(&mut block, numel).map_err(|e| {
                BackboneError::Invalid(format!("copying {}: {e}", outputs[i].spec.tap))
            })?;
            let sink = match &mut sinks[i] {
                Some(sink) => sink,
                empty => empty.insert(open_sink(outputs[i].file.as_ref(), n, dim)?),
            };
            match sink {
                Sink::Memory(buf) => buf.extend_from_slice(&block),
                Sink::File { writer, .. } => writer.write_f32(&block)?,
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    tracing::info!(
        images = n,
        seconds = secs,
        images_per_s = n as f64 / secs.max(1e-9),
        "features extracted"
    );

    outputs
        .iter()
        .map(|o| o.spec.tap.as_str())
        .zip(shapes.into_iter().zip(sinks))
        .map(|(tap, (shape, sink))| {
            let (Some((map_shape, pooling, dim)), Some(sink)) = (shape, sink) else {
                return Err(BackboneError::Invalid(format!(
                    "tap {tap} produced nothing"
                )));
            };
            if let Pooling::AdaptiveAvg { grid } = pooling {
                tracing::info!(tap, ?map_shape, grid, dim, "pooled conv tap");
            }
            let data = match sink {
                Sink::Memory(buf) => FeatureData::Memory(
                    Array2::from_shape_vec((n, dim), buf)
                        .map_err(|e| BackboneError::Invalid(format!("features of {tap}: {e}")))?,
                ),
                Sink::File { writer, tmp, path } => {
                    // A batch of another width would have overrun or underrun the file.
                    writer.finish()?;
                    std::fs::rename(&tmp, &path).map_err(|e| BackboneError::FeatureCache {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                    FeatureData::File(path)
                }
            };
            Ok(Computed {
                map_shape,
                pooling,
                dim,
                data,
            })
        })
        .collect()
}

fn open_sink(path: Option<&PathBuf>, n: usize, dim: usize) -> Result<Sink, BackboneError> {
    let Some(path) = path else {
        return Ok(Sink::Memory(Vec::with_capacity(n * dim)));
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| BackboneError::FeatureCache {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    let tmp = vcl_dataset::paths::partial(path);
    let writer = vcl_dataset::npy::NpyWriter::create(&tmp, "<f4", &[n, dim], 4)?;
    Ok(Sink::File {
        writer,
        tmp,
        path: path.clone(),
    })
}

/// [B, ...] -> contiguous float32 [B, D] on the CPU.
fn flatten(out: &Tensor, pooling: Pooling) -> Result<Tensor, BackboneError> {
    let pooled = match pooling {
        Pooling::None => out.shallow_clone(),
        Pooling::AdaptiveAvg { grid } => out.adaptive_avg_pool2d([grid, grid]),
    };
    pooled
        .flatten(1, -1)
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_to_device(tch::Device::Cpu))
        .and_then(|t| t.f_contiguous())
        .map_err(|e| BackboneError::Invalid(format!("moving features to the CPU: {e}")))
}

/// What a cached feature file depends on, besides the tap.
struct CacheKey<'a> {
    weights_hash: &'a str,
    pixels: &'a PixelCache,
    rows: &'a [usize],
    max_dim: Option<usize>,
}

impl CacheKey<'_> {
    fn path(&self, dir: &Path, backbone: &Backbone, spec: &FeatureSpec) -> PathBuf {
        let tap = spec.tap.as_str();
        let mut h = Sha256::new();
        h.update(FEATURES_VERSION.as_bytes());
        h.update(self.weights_hash.as_bytes());
        h.update(backbone.arch().name().as_bytes());
        h.update([0u8]);
        h.update(tap.as_bytes());
        h.update([0u8]);
        h.update(format!("{:?}", self.max_dim).as_bytes());
        // `cap` hashes as before, so caches written before grids were a choice stay valid.
        if spec.grid != GridChoice::Cap {
            h.update(format!("grid={}", spec.grid).as_bytes());
        }
        h.update(self.pixels.path.to_string_lossy().as_bytes());
        h.update([0u8]);
        h.update(self.pixels.size.to_le_bytes());
        h.update((self.pixels.len() as u64).to_le_bytes());
        for &r in self.rows {
            h.update((r as u64).to_le_bytes());
        }
        let key = &hex::encode(h.finalize())[..20];
        dir.join(format!("{}-{tap}-{key}.npy", backbone.arch().name()))
    }
}

fn sidecar(npy: &Path) -> PathBuf {
    npy.with_extension("json")
}

/// A cache entry, if both files are there and agree with each other; anything else
/// (a run killed between the two writes, a foreign file) means recompute. Only the
/// header is read: the matrix is loaded when the caller asks for it.
fn read_cached(path: &Path, n: usize) -> Option<TapFeatures> {
    let info: TapInfo = std::fs::read(sidecar(path))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())?;
    match check_layout(path, n, info.dim) {
        Ok(_) if info.images == n => {
            tracing::debug!(path = %path.display(), tap = %info.tap, "feature cache hit");
            Some(TapFeatures {
                info,
                data: FeatureData::File(path.to_path_buf()),
                from_cache: true,
            })
        }
        Ok(_) => None,
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "ignoring unreadable feature cache");
            None
        }
    }
}

/// The description goes after the whole .npy: a reader only trusts the pair, and each
/// file appears whole (rename), so a killed run leaves no half-file that looks valid.
fn write_sidecar(path: &Path, info: &TapInfo) -> Result<(), BackboneError> {
    let cache_err = |reason: String| BackboneError::FeatureCache {
        path: path.to_path_buf(),
        reason,
    };
    let json = sidecar(path);
    let tmp = vcl_dataset::paths::partial(&json);
    let body = serde_json::to_vec_pretty(info).map_err(|e| cache_err(e.to_string()))?;
    std::fs::write(&tmp, body).map_err(|e| cache_err(e.to_string()))?;
    std::fs::rename(&tmp, &json).map_err(|e| cache_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::backbones::Arch;
    use ndarray::Array4;
    use tch::Device;

    fn pixels(dir: &Path, n: usize, size: u32) -> PixelCache {
        let s = size as usize;
        let px = Array4::from_shape_fn((n, 3, s, s), |(i, c, y, x)| {
            ((i * 37 + c * 61 + y * 7 + x * 3) % 256) as u8
        });
        PixelCache::write(&dir.join(format!("pixels-test-{n}-{size}.npy")), &px).unwrap()
    }

    fn capped(taps: &[&str]) -> Vec<FeatureSpec> {
        taps.iter()
            .map(|t| FeatureSpec::new(t, GridChoice::Cap))
            .collect()
    }

    #[test]
    fn grid_choices_parse_and_resolve() {
        let parsed: Vec<GridChoice> = ["cap", "full", "4"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            parsed,
            [GridChoice::Cap, GridChoice::Full, GridChoice::Grid(4)]
        );
        for bad in ["0", "-2", "fine", ""] {
            let e = bad.parse::<GridChoice>().unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        let json = serde_json::to_string(&parsed).unwrap();
        assert_eq!(json, r#"["cap","full","4"]"#);
        assert_eq!(
            serde_json::from_str::<Vec<GridChoice>>(&json).unwrap(),
            parsed
        );
        let map = [64, 15, 15];
        assert_eq!(
            GridChoice::Grid(4).resolve(&map, None),
            Pooling::AdaptiveAvg { grid: 4 }
        );
        // A grid as large as the map is the map; vector taps are never pooled.
        assert_eq!(GridChoice::Grid(15).resolve(&map, None), Pooling::None);
        assert_eq!(GridChoice::Grid(2).resolve(&[1000], None), Pooling::None);
        assert_eq!(GridChoice::Full.resolve(&map, Some(10)), Pooling::None);
        assert_eq!(
            GridChoice::Cap.resolve(&map, Some(10_000)),
            pooling_for(&map, Some(10_000))
        );
        for p in [Pooling::None, Pooling::AdaptiveAvg { grid: 3 }] {
            assert_eq!(GridChoice::of(p).resolve(&map, Some(10)), p);
        }
    }

    #[test]
    fn grids_of_one_tap_come_from_one_pass_and_are_cached_apart() {
        let dir = tempfile::tempdir().unwrap();
        let px = pixels(dir.path(), 4, 128);
        let backbone = Backbone::random(Arch::AlexNet, Device::Cpu, 3);
        let rows = [0, 1, 3];
        let opts = ExtractOptions {
            batch_size: 2,
            max_dim: Some(5000),
            cache_dir: Some(dir.path().join("features")),
        };
        let specs: Vec<FeatureSpec> = [GridChoice::Cap, GridChoice::Grid(2), GridChoice::Full]
            .into_iter()
            .map(|g| FeatureSpec::new("features.2", g))
            .collect();
        let got = extract(&backbone, &px, &rows, &specs, &opts).unwrap();
        assert_eq!(got.images_run, 3, "one pass serves every grid");
        let pools: Vec<Pooling> = got.taps.iter().map(|t| t.info.pooling).collect();
        assert_eq!(
            pools,
            [
                Pooling::AdaptiveAvg { grid: 8 },
                Pooling::AdaptiveAvg { grid: 2 },
                Pooling::None
            ]
        );
        // The 2x2 grid is torch's pooling of the full map.
        let full = got.taps[2].tensor().unwrap().view([3, 64, 15, 15]);
        let want = full.adaptive_avg_pool2d([2, 2]).flatten(1, -1);
        let diff = (got.taps[1].tensor().unwrap() - want)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
        let again = extract(&backbone, &px, &rows, &specs, &opts).unwrap();
        assert_eq!(again.images_run, 0);
        for (a, b) in got.taps.iter().zip(&again.taps) {
            assert_eq!(a.info, b.info);
            assert_ne!(a.cache_path(), None);
        }
        let files: std::collections::BTreeSet<_> = got
            .taps
            .iter()
            .map(|t| t.cache_path().unwrap().to_path_buf())
            .collect();
        assert_eq!(files.len(), 3);
    }

    #[test]
    fn pooling_caps_dimensions() {
        assert_eq!(pooling_for(&[64, 27, 27], None), Pooling::None);
        assert_eq!(pooling_for(&[4096], Some(10)), Pooling::None);
        assert_eq!(pooling_for(&[64, 27, 27], Some(100_000)), Pooling::None);
        // 64*12*12 = 9216 <= 10000 < 64*13*13 = 10816
        assert_eq!(
            pooling_for(&[64, 27, 27], Some(10_000)),
            Pooling::AdaptiveAvg { grid: 12 }
        );
        assert_eq!(
            pooling_for(&[2048, 7, 7], Some(1000)),
            Pooling::AdaptiveAvg { grid: 1 }
        );
    }

    #[test]
    fn second_extraction_hits_the_cache_and_pooling_caps_dims() {
        let dir = tempfile::tempdir().unwrap();
        let px = pixels(dir.path(), 5, 128);
        let backbone = Backbone::random(Arch::AlexNet, Device::Cpu, 7);
        let rows = [4, 0, 2];
        let opts = ExtractOptions {
            batch_size: 2,
            max_dim: Some(5000),
            cache_dir: Some(dir.path().join("features")),
        };
        let taps = capped(&["features.2", "features.12", "classifier.6"]);
        let first = extract(&backbone, &px, &rows, &taps, &opts).unwrap();
        assert_eq!(first.images_run, 3);
        assert!(first.taps.iter().all(|t| !t.from_cache));

        // features.2 at 128 px is 64x15x15 = 14400 > 5000: pooled to 8x8 (4096).
        let f2 = first.get("features.2").unwrap();
        assert_eq!(f2.info.map_shape, vec![64, 15, 15]);
        assert_eq!(f2.info.pooling, Pooling::AdaptiveAvg { grid: 8 });
        assert_eq!(f2.array().unwrap().dim(), (3, 64 * 8 * 8));
        // features.12 is 256x3x3 = 2304 <= 5000: untouched.
        let f12 = first.get("features.12").unwrap();
        assert_eq!(f12.info.pooling, Pooling::None);
        assert_eq!(f12.array().unwrap().dim(), (3, 2304));
        assert_eq!(
            first.get("classifier.6").unwrap().array().unwrap().dim(),
            (3, 1000)
        );

        // Row order is honoured: batch results equal a direct forward pass.
        let x = px.batch(&rows, Device::Cpu).unwrap();
        let logits = tch::no_grad(|| backbone.logits(&x, false));
        let direct: Vec<f32> = Vec::try_from(logits.flatten(0, -1)).unwrap();
        let ours = first
            .get("classifier.6")
            .unwrap()
            .array()
            .unwrap()
            .into_raw_vec_and_offset()
            .0;
        let max_diff = direct
            .iter()
            .zip(&ours)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max_diff < 1e-4, "{max_diff}");

        let second = extract(&backbone, &px, &rows, &taps, &opts).unwrap();
        assert_eq!(
            second.images_run, 0,
            "the network must not run on a cache hit"
        );
        for (a, b) in first.taps.iter().zip(&second.taps) {
            assert!(b.from_cache);
            assert_eq!(a.info, b.info);
            assert_eq!(a.array().unwrap(), b.array().unwrap());
            // What a pipeline loads: the same matrix as a tensor.
            let t: Vec<f32> = Vec::try_from(b.tensor().unwrap().flatten(0, -1)).unwrap();
            assert_eq!(t, a.array().unwrap().into_raw_vec_and_offset().0);
        }

        // Other rows, or other pooling, are other cache entries.
        let other = extract(&backbone, &px, &[1, 3], &taps[..1], &opts).unwrap();
        assert_eq!(other.images_run, 2);
        let unpooled = ExtractOptions {
            max_dim: None,
            ..opts.clone()
        };
        let full = extract(&backbone, &px, &rows, &taps[..1], &unpooled).unwrap();
        assert_eq!(full.images_run, 3);
        assert_eq!(full.taps[0].array().unwrap().ncols(), 14400);

        // Without a cache the features stay in memory and agree with the cached ones.
        let mem = ExtractOptions {
            cache_dir: None,
            ..opts.clone()
        };
        let in_memory = extract(&backbone, &px, &rows, &taps, &mem).unwrap();
        for (a, b) in first.taps.iter().zip(&in_memory.taps) {
            assert!(matches!(b.data, FeatureData::Memory(_)));
            assert_eq!(a.array().unwrap(), b.array().unwrap());
        }

        // A cache file cut short is recomputed, not trusted.
        let path = first.taps[0].cache_path().unwrap().to_path_buf();
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 4)
            .unwrap();
        let again = extract(&backbone, &px, &rows, &taps[..1], &opts).unwrap();
        assert_eq!(again.images_run, 3);
        assert_eq!(
            again.taps[0].array().unwrap(),
            in_memory.taps[0].array().unwrap()
        );
    }

    #[test]
    fn bad_rows_and_taps_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let px = pixels(dir.path(), 2, 128);
        let backbone = Backbone::random(Arch::MobileNetV2, Device::Cpu, 1);
        let opts = ExtractOptions::default();
        let e = extract(&backbone, &px, &[2], &capped(&["avgpool"]), &opts).unwrap_err();
        assert!(e.to_string().contains("row 2"), "{e}");
        let e = extract(&backbone, &px, &[0], &capped(&["fc"]), &opts).unwrap_err();
        assert!(e.to_string().contains("features.18"), "{e}");
    }
}
