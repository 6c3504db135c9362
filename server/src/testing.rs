//! Test helpers (the `testing` feature, off in the server binary): a backend that
//! computes something simple and known ([`FakeBackend`]), a small valid manifest, and
//! model repositories on disk served by fakes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vcl_contract::manifest::*;

use crate::backend::{chw, Backend, BackendError, Outputs};

/// For tests: voxel j of an image is the mean of its channel j % 3 plus j / 1000; an
/// ROI's mean is its voxels' mean. Records each batch's size; can sleep or fail.
pub struct FakeBackend {
    pub chw: [usize; 3],
    pub slices: Vec<VoxelSlice>,
    pub delay: Duration,
    pub fail: bool,
    /// Panics on the batch after this many (warm-up included): a broken backend.
    pub panic_after: Option<usize>,
    /// Returns one voxel value too few: a backend that lies about its output.
    pub short_output: bool,
    /// Fails every batch after this many (warm-up included): a session gone bad.
    pub fail_after: Option<usize>,
    pub batches: Arc<Mutex<Vec<usize>>>,
}

impl FakeBackend {
    pub fn new(manifest: &Manifest) -> Self {
        FakeBackend {
            chw: chw(manifest),
            slices: manifest.rois.iter().map(|r| r.slice).collect(),
            delay: Duration::ZERO,
            fail: false,
            panic_after: None,
            short_output: false,
            fail_after: None,
            batches: Arc::default(),
        }
    }

    /// What the fake predicts for one image ([3, H, W]): (voxels, roi_means).
    pub fn expected(&self, image: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let plane = self.chw[1] * self.chw[2];
        let means: Vec<f32> = (0..3)
            .map(|c| image[c * plane..(c + 1) * plane].iter().sum::<f32>() / plane as f32)
            .collect();
        let v = self.slices.last().map(|s| s.end).unwrap_or(0);
        let voxels: Vec<f32> = (0..v).map(|j| means[j % 3] + j as f32 / 1000.0).collect();
        let rois = self
            .slices
            .iter()
            .map(|s| voxels[s.start..s.end].iter().sum::<f32>() / s.len() as f32)
            .collect();
        (voxels, rois)
    }
}

impl Backend for FakeBackend {
    fn predict(&mut self, n: usize, pixels: Vec<f32>) -> Result<Outputs, BackendError> {
        let seen = {
            let mut b = self
                .batches
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            b.push(n);
            b.len()
        };
        if self.panic_after.is_some_and(|k| seen > k) {
            panic!("the fake backend was told to panic");
        }
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        if self.fail || self.fail_after.is_some_and(|k| seen > k) {
            return Err(BackendError("the fake backend was told to fail".into()));
        }
        let per = self.chw.iter().product::<usize>();
        if pixels.len() != n * per {
            return Err(BackendError(format!(
                "{} values for {n} images of {per}",
                pixels.len()
            )));
        }
        let mut out = Outputs {
            voxels: Vec::new(),
            roi_means: Vec::new(),
        };
        for img in pixels.chunks(per) {
            let (v, r) = self.expected(img);
            out.voxels.extend(v);
            out.roi_means.extend(r);
        }
        if self.short_output {
            out.voxels.pop();
        }
        Ok(out)
    }
}

/// A manifest of a model `name` with `size` px input and ROIs of the given names and
/// voxel counts, in order.
pub fn manifest(name: &str, size: u32, rois: &[(&str, usize)]) -> Manifest {
    let mut start = 0;
    let rois: Vec<RoiSpec> = rois
        .iter()
        .map(|(roi, n)| {
            let slice = VoxelSlice {
                start,
                end: start + n,
            };
            start += n;
            RoiSpec {
                name: roi.to_string(),
                slice,
                vertices: (slice.start as u32..slice.end as u32).collect(),
                fsaverage: None,
                tap: "features.6".into(),
                pooling: Pooling::None,
                feature_dim: 8,
                encoder: vcl_contract::manifest::Encoder::PcaRidge,
                pca_components: 4,
                alpha: AlphaSummary {
                    mode: AlphaMode::Voxel,
                    min: 1.0,
                    median: 1.0,
                    max: 1.0,
                },
                cv_score: 0.1,
                evaluation: None,
            }
        })
        .collect();
    let tensor = TensorSpec::float32;
    Manifest {
        schema_version: SCHEMA_VERSION,
        model: ModelInfo {
            name: name.into(),
            version: 1,
            opset: 17,
            ir_version: 8,
        },
        subject: "subj01".into(),
        hemisphere: Hemisphere::Left,
        input: InputSpec::rgb_square(size),
        outputs: OutputsSpec {
            voxels: tensor(VOXELS_OUTPUT, vec![Dim::batch(), Dim::Fixed(start as u64)]),
            roi_means: tensor(
                ROI_MEANS_OUTPUT,
                vec![Dim::batch(), Dim::Fixed(rois.len() as u64)],
            ),
        },
        rois,
        backbone: BackboneSpec {
            arch: "mobilenet_v2".into(),
            weights_hash: "0".repeat(64),
            weights_file: "mobilenet_v2.safetensors".into(),
            batchnorm_folded: true,
        },
        training: TrainingSpec {
            method: Method::Untuned,
            method_label: "untuned".into(),
            heldout_fraction: 0.25,
            split_seed: 0,
            n_train_images: 10,
            config: serde_json::json!({}),
        },
        provenance: Provenance {
            git_commit: None,
            dataset_fingerprint: "0".repeat(64),
            seed: 0,
            run: "runs/fake".into(),
            exporter: "test".into(),
            exported_at_unix: 0,
        },
        verification: Verification {
            images: 0,
            max_abs_diff: 0.0,
            max_rel_diff: 0.0,
            tolerance: 1e-3,
            runtime: "none".into(),
        },
        model_sha256: "0".repeat(64),
    }
}

/// Publishes `<root>/<name>/<version>/` with a stand-in `model.onnx` holding `model`
/// (see [`fake_opener`]) and a manifest of `(input size, ROIs)` as [`manifest`] makes
/// it, whose checksum matches the model.
pub fn write_version(
    root: &std::path::Path,
    name: &str,
    version: u32,
    (size, rois): (u32, &[(&str, usize)]),
    model: &[u8],
) -> std::path::PathBuf {
    let dir = root.join(name).join(version.to_string());
    std::fs::create_dir_all(&dir).expect("creating a version folder");
    let file = dir.join(MODEL_FILE);
    std::fs::write(&file, model).expect("writing model.onnx");
    let mut m = manifest(name, size, rois);
    m.model.version = version;
    m.model_sha256 = sha256_file(&file).expect("hashing model.onnx");
    m.write(&dir).expect("writing manifest.json");
    dir
}

/// Opens version folders as [`FakeBackend`]s. The stand-in `model.onnx` steers it:
/// `corrupt` fails to open, `fail` opens but fails every inference (its warm-up too),
/// `panic` warms up and then panics on its first batch, `flaky` warms up and then fails
/// every batch, `short` answers one voxel too few, anything else serves.
pub fn fake_opener() -> std::sync::Arc<crate::repository::Opener> {
    std::sync::Arc::new(|dir: &std::path::Path, manifest: &Manifest| {
        let bytes = std::fs::read(dir.join(MODEL_FILE))
            .map_err(|e| crate::ServerError::Repository(format!("{}: {e}", dir.display())))?;
        if bytes.starts_with(b"corrupt") {
            return Err(crate::ServerError::Repository(format!(
                "{}: not an ONNX model",
                dir.display()
            )));
        }
        let mut fake = FakeBackend::new(manifest);
        fake.fail = bytes.starts_with(b"fail");
        if bytes.starts_with(b"panic") {
            fake.panic_after = Some(1);
        }
        if bytes.starts_with(b"flaky") {
            fake.fail_after = Some(1);
        }
        fake.short_output = bytes.starts_with(b"short");
        Ok((
            Box::new(fake) as Box<dyn Backend>,
            vcl_contract::runtime::Provider::Cpu,
        ))
    })
}

/// A PNG of `side` x `side` 16-bit RGBA zeros, written row by row: about half a
/// megabyte at 8192 px that would decode to 512 MiB (a decompression bomb).
pub fn png_bomb(side: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, side, side);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Sixteen);
    enc.set_compression(png::Compression::High);
    let row = vec![0u8; side as usize * 8];
    let written = enc.write_header().and_then(|mut w| {
        let mut stream = w.stream_writer()?;
        for _ in 0..side {
            std::io::Write::write_all(&mut stream, &row)?;
        }
        stream.finish()
    });
    written.expect("encoding a PNG in memory");
    bytes
}
