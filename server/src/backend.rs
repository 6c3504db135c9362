//! The backend: a small synchronous trait free of ort types. [`OrtBackend`] runs an
//! exported model with ONNX Runtime; [`FakeBackend`] computes something simple and
//! known, for tests of everything above it. A backend is owned by one batcher thread.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vcl_contract::manifest::{Manifest, VoxelSlice};
use vcl_contract::runtime::{self, NamedOutput};

/// What one batch computes: voxels [n, V] and roi_means [n, R], row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    pub voxels: Vec<f32>,
    pub roi_means: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

pub trait Backend: Send {
    /// Runs `n` images, `pixels` float32 [n, 3, H, W] RGB in [0, 1].
    fn predict(&mut self, n: usize, pixels: Vec<f32>) -> Result<Outputs, BackendError>;
}

/// An ONNX Runtime session checked against its manifest.
pub struct OrtBackend {
    session: ort::session::Session,
    chw: [usize; 3],
    voxels: (String, usize),
    roi_means: (String, usize),
}

impl OrtBackend {
    /// `session` must have passed `runtime::check_session` against `manifest`.
    pub fn new(session: ort::session::Session, manifest: &Manifest) -> Self {
        OrtBackend {
            session,
            chw: chw(manifest),
            voxels: (manifest.outputs.voxels.name.clone(), manifest.n_voxels()),
            roi_means: (manifest.outputs.roi_means.name.clone(), manifest.rois.len()),
        }
    }
}

/// [3, H, W] of a manifest's input.
pub fn chw(manifest: &Manifest) -> [usize; 3] {
    [
        3,
        manifest.input.height as usize,
        manifest.input.width as usize,
    ]
}

impl Backend for OrtBackend {
    fn predict(&mut self, n: usize, pixels: Vec<f32>) -> Result<Outputs, BackendError> {
        let shape = [n, self.chw[0], self.chw[1], self.chw[2]];
        let outs = runtime::run_f32_all(&mut self.session, &shape, pixels)
            .map_err(|e| BackendError(e.to_string()))?;
        let take = |outs: &[NamedOutput], (name, cols): &(String, usize)| {
            let o = outs
                .iter()
                .find(|o| &o.name == name)
                .ok_or_else(|| BackendError(format!("the model returned no output '{name}'")))?;
            if o.shape != [n as i64, *cols as i64] {
                return Err(BackendError(format!(
                    "output '{name}' has shape {:?}, expected [{n}, {cols}]",
                    o.shape
                )));
            }
            Ok(o.values.clone())
        };
        Ok(Outputs {
            voxels: take(&outs, &self.voxels)?,
            roi_means: take(&outs, &self.roi_means)?,
        })
    }
}

/// For tests: voxel j of an image is the mean of its channel j % 3 plus j / 1000; an
/// ROI's mean is its voxels' mean. Records each batch's size; can sleep or fail.
pub struct FakeBackend {
    pub chw: [usize; 3],
    pub slices: Vec<VoxelSlice>,
    pub delay: Duration,
    pub fail: bool,
    pub batches: Arc<Mutex<Vec<usize>>>,
}

impl FakeBackend {
    pub fn new(manifest: &Manifest) -> Self {
        FakeBackend {
            chw: chw(manifest),
            slices: manifest.rois.iter().map(|r| r.slice).collect(),
            delay: Duration::ZERO,
            fail: false,
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
        self.batches.lock().unwrap().push(n);
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        if self.fail {
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
        Ok(out)
    }
}

/// Opens `dir/model.onnx` on ONNX Runtime and checks it against its manifest.
pub fn open_ort(
    rt: &runtime::Runtime,
    dir: &Path,
    manifest: &Manifest,
    device: runtime::DeviceChoice,
    intra_threads: usize,
) -> Result<(OrtBackend, runtime::Provider), vcl_contract::ContractError> {
    let model = dir.join(vcl_contract::manifest::MODEL_FILE);
    let (session, provider) = rt.session(&model, device, intra_threads)?;
    runtime::check_session(manifest, &session, &model)?;
    Ok((OrtBackend::new(session, manifest), provider))
}
