//! Voxel encoding models: PCA of a tap's features, then ridge regression from the
//! components to every voxel, with the regularization chosen by K-fold cross-validation
//! inside the training images (METHOD.md, "Encoding model and evaluation").
//!
//! Built like himalaya, as small functions over data that compose:
//!
//! ```text
//! pca::fit_pca(x_train, 1000)          -> Pca { mean [d], components [d,k], .. }
//! cv::kfold(n, 5, None)                -> folds (contiguous, like sklearn's KFold)
//! cv::cross_validate(x, y, grid)       -> scores [folds, alphas, voxels]
//! cv::mean_over_folds(scores)          -> [alphas, voxels]
//! cv::select_alphas(mean, alphas, ..)  -> one alpha per voxel (local or shared)
//! solvers::solve_ridge_svd_per_voxel   -> Weights { coef [p,v], intercept [v] }
//! ```
//!
//! [`ridge_cv`] runs that chain; [`predict`] applies its result. Every function takes
//! the [`tch::Device`] it computes on; inputs may live anywhere (a large `y` may stay in
//! host memory: it is moved to the device one voxel batch at a time).
//!
//! Precision: the big products (features x targets) run in the inputs' kind (f32 unless
//! the caller passes f64); the decompositions (SVD, Gram matrices and their
//! eigendecompositions) and the fold statistics run in f64, because squaring the
//! features' scale there would otherwise lose the small components that a small alpha
//! still uses.

pub mod cv;
pub mod pca;
pub mod scoring;
pub mod solvers;

use ndarray::{Array2, ArrayView2};

/// The tensor vocabulary of this module's signatures, re-exported so that callers (and
/// the end-to-end tests) need no direct tch dependency.
pub use tch::{Device, Kind, Tensor};

pub use cv::{cross_validate, kfold, mean_over_folds, select_alphas, CvGrid, Fold};
pub use pca::{fit_pca, fit_pca_with, Pca, PcaSolver, DEFAULT_COMPONENTS};
pub use scoring::{pearson_columns, r2_columns, Scorer};
pub use solvers::{solve_ridge_svd, solve_ridge_svd_per_voxel, Weights};

/// Voxels solved together when the caller does not say: at NSD scale (p = 1000) one
/// batch's working set is about 0.3 GB (see [`cv::cross_validate`]); on 2 CPU cores
/// 1024, 2048 and 4096 ran equally fast there.
pub const DEFAULT_VOXEL_BATCH: usize = 2048;

/// Everything that can go wrong fitting or applying an encoding model; each variant
/// names the array or number at fault.
#[derive(Debug, thiserror::Error)]
pub enum RidgeError {
    #[error(
        "{rows} training images cannot be split into {folds} cross-validation folds: \
         every fold needs at least one image (use at most {rows} folds, or more images)"
    )]
    TooFewRows { rows: usize, folds: usize },

    #[error("cross-validation needs at least 2 folds, got {0}")]
    TooFewFolds(usize),

    #[error("x has {x_rows} rows but y has {y_rows}: both must have one row per image")]
    RowMismatch { x_rows: usize, y_rows: usize },

    #[error("{array} must be a 2-D matrix [rows, columns], found shape {shape:?}")]
    NotMatrix {
        array: &'static str,
        shape: Vec<i64>,
    },

    #[error("{array} is empty (shape {shape:?})")]
    Empty {
        array: &'static str,
        shape: Vec<i64>,
    },

    #[error("x has {found} feature columns but the model was fitted on {expected}")]
    FeatureMismatch { expected: usize, found: usize },

    #[error("fold row index {index} is outside 0..{rows}")]
    RowIndex { index: i64, rows: usize },

    #[error("scores of shape {shape:?} do not match {alphas} alphas: expected [alphas, voxels]")]
    ScoreShape { shape: Vec<i64>, alphas: usize },

    #[error("no alphas to try: give at least one regularization strength")]
    NoAlphas,

    #[error("alpha {0} is not a positive finite number")]
    BadAlpha(f64),

    #[error("{given} per-voxel alphas given for {voxels} voxels")]
    AlphaCount { given: usize, voxels: usize },

    #[error("{array} holds non-finite values (NaN or infinity)")]
    NonFinite { array: &'static str },

    #[error("PCA needs at least 2 rows and 1 requested component (rows {rows}, components {k})")]
    BadPca { rows: usize, k: usize },

    #[error("libtorch failed in {op}: {source}")]
    Torch {
        op: &'static str,
        #[source]
        source: tch::TchError,
    },
}

pub type Result<T> = std::result::Result<T, RidgeError>;

/// `num` values from 10^start to 10^end, evenly spaced in log10 (numpy's `logspace`).
pub fn logspace(start: f64, end: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![10f64.powf(start)],
        _ => (0..num)
            .map(|i| 10f64.powf(start + (end - start) * i as f64 / (num - 1) as f64))
            .collect(),
    }
}

/// METHOD.md's grid: logspace(-1, 7, 9) = 0.1, 1, ..., 1e7.
pub fn default_alphas() -> Vec<f64> {
    logspace(-1.0, 7.0, 9)
}

/// How [`ridge_cv`] chooses and refits.
#[derive(Debug, Clone, PartialEq)]
pub struct RidgeCvConfig {
    /// Regularization strengths to try (all positive).
    pub alphas: Vec<f64>,
    /// K of K-fold cross-validation inside the training rows.
    pub folds: usize,
    /// One alpha per voxel (himalaya's `local_alpha=True`) or one shared by all the
    /// voxels passed (the paper's one alpha per ROI: call once per ROI).
    pub per_voxel: bool,
    /// Voxels solved at once; bounds memory (see [`cv::cross_validate`]).
    pub voxel_batch: usize,
    /// None: contiguous folds in row order (sklearn `KFold(k)`); Some(seed): rows
    /// permuted first with this seed (not sklearn's permutation).
    pub shuffle_seed: Option<u64>,
    /// What the folds score: R^2 (himalaya's default) or Pearson r.
    pub scorer: Scorer,
}

impl Default for RidgeCvConfig {
    fn default() -> Self {
        Self {
            alphas: default_alphas(),
            folds: 5,
            per_voxel: true,
            voxel_batch: DEFAULT_VOXEL_BATCH,
            shuffle_seed: None,
            scorer: Scorer::R2,
        }
    }
}

/// A cross-validated ridge fit.
#[derive(Debug)]
pub struct RidgeFit {
    /// [p, v] weights, refit on all training rows with each voxel's alpha.
    pub coef: Tensor,
    /// [v] intercepts (the fit centers x and y, as sklearn's `fit_intercept=True`).
    pub intercept: Tensor,
    /// [v] the alpha each voxel was refit with.
    pub alphas: Vec<f64>,
    /// [alphas, v] cross-validation scores, mean over folds (f64, on the device).
    pub cv_scores: Tensor,
}

/// K-fold cross-validated ridge: scores every alpha on every fold, picks alphas (per
/// voxel or shared), and refits on all rows of `x` [n, p] -> `y` [n, v].
///
/// Peak memory: the larger of the CV pass ([`cv::cross_validate`], about 0.4 GB at
/// NSD scale) and the refit ([`solve_ridge_svd_per_voxel`]: f64 SVD of x, 8 (2 n p +
/// p^2) bytes, then 4 (n r + p r + b (n + r + p)) per batch), plus the result,
/// 4 (p + 1) v + 8 alphas v bytes; `y` is read one voxel batch at a time.
pub fn ridge_cv(x: &Tensor, y: &Tensor, cfg: &RidgeCvConfig, device: Device) -> Result<RidgeFit> {
    let (n, _, _) = check_xy(x, y)?;
    check_alphas(&cfg.alphas)?;
    let folds = kfold(n, cfg.folds, cfg.shuffle_seed)?;
    let grid = CvGrid {
        folds: &folds,
        alphas: &cfg.alphas,
        scorer: cfg.scorer,
        voxel_batch: cfg.voxel_batch,
    };
    let scores = cross_validate(x, y, &grid, device)?;
    let mean = mean_over_folds(&scores);
    let alphas = select_alphas(&mean, &cfg.alphas, cfg.per_voxel)?;
    let w = solve_ridge_svd_per_voxel(x, y, &alphas, cfg.voxel_batch, device)?;
    Ok(RidgeFit {
        coef: w.coef,
        intercept: w.intercept,
        alphas,
        cv_scores: mean,
    })
}

/// Predictions [n, v] of a fit for `x` [n, p], on the fit's device.
pub fn predict(fit: &RidgeFit, x: &Tensor) -> Result<Tensor> {
    solvers::linear_predict(&fit.coef, &fit.intercept, x)
}

/// A host tensor [rows, cols] of the same element type as `a` (f32 features, f64
/// references).
/// The one ndarray -> tensor copy of the trainer.
pub fn matrix_to_tensor<A: tch::kind::Element + Copy>(a: ArrayView2<A>) -> Tensor {
    let (rows, cols) = a.dim();
    // Row-major whatever the view's memory layout; no copy when it already is.
    let std = a.as_standard_layout();
    let flat = std
        .as_slice()
        .expect("a standard-layout array is contiguous");
    Tensor::from_slice(flat).view([rows as i64, cols as i64])
}

/// An f64 host copy of a 2-D tensor of any kind, on any device.
pub fn tensor_to_matrix(t: &Tensor) -> Result<Array2<f64>> {
    let shape = t.size();
    if shape.len() != 2 {
        return Err(RidgeError::NotMatrix {
            array: "tensor",
            shape,
        });
    }
    let flat = t
        .to_device(Device::Cpu)
        .to_kind(Kind::Double)
        .contiguous()
        .view([-1]);
    let data = Vec::<f64>::try_from(&flat).map_err(torch_err("copying a tensor to the host"))?;
    Array2::from_shape_vec((shape[0] as usize, shape[1] as usize), data).map_err(|_| {
        RidgeError::NotMatrix {
            array: "tensor",
            shape,
        }
    })
}

/// An f64 host copy of any tensor's elements in row-major order.
pub fn tensor_to_vec(t: &Tensor) -> Result<Vec<f64>> {
    let flat = t
        .to_device(Device::Cpu)
        .to_kind(Kind::Double)
        .contiguous()
        .view([-1]);
    Vec::<f64>::try_from(&flat).map_err(torch_err("copying a tensor to the host"))
}

// ---- validation shared by the submodules -------------------------------------------

/// The kind the arithmetic runs in: f64 if the caller gave f64, else f32.
pub(crate) fn work_kind(t: &Tensor) -> Kind {
    if t.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// [rows, cols] of a non-empty 2-D array, or the error naming it.
pub(crate) fn matrix_dims(t: &Tensor, array: &'static str) -> Result<(usize, usize)> {
    let shape = t.size();
    if shape.len() != 2 {
        return Err(RidgeError::NotMatrix { array, shape });
    }
    if shape[0] == 0 || shape[1] == 0 {
        return Err(RidgeError::Empty { array, shape });
    }
    Ok((shape[0] as usize, shape[1] as usize))
}

/// Errors if `t` holds NaN or infinity. Checks column blocks so that a large host
/// array is never doubled by the boolean mask.
pub(crate) fn check_finite(t: &Tensor, array: &'static str) -> Result<()> {
    let cols = *t.size().last().unwrap_or(&0);
    let rows = (t.numel() as i64 / cols.max(1)).max(1);
    // about 16M elements per block
    let block = ((1 << 24) / rows).max(1);
    let mut start = 0;
    while start < cols {
        let len = block.min(cols - start);
        let ok = t
            .narrow(-1, start, len)
            .isfinite()
            .all()
            .f_int64_value(&[])
            .map_err(|source| RidgeError::Torch {
                op: "finite check",
                source,
            })?;
        if ok == 0 {
            return Err(RidgeError::NonFinite { array });
        }
        start += len;
    }
    Ok(())
}

/// Validates a design `x` [n, p] and targets `y` [n, v]; returns (n, p, v).
pub(crate) fn check_xy(x: &Tensor, y: &Tensor) -> Result<(usize, usize, usize)> {
    let (n, p) = matrix_dims(x, "x")?;
    let (ny, v) = matrix_dims(y, "y")?;
    if n != ny {
        return Err(RidgeError::RowMismatch {
            x_rows: n,
            y_rows: ny,
        });
    }
    check_finite(x, "x")?;
    check_finite(y, "y")?;
    Ok((n, p, v))
}

pub(crate) fn check_alphas(alphas: &[f64]) -> Result<()> {
    if alphas.is_empty() {
        return Err(RidgeError::NoAlphas);
    }
    match alphas.iter().find(|a| !(a.is_finite() && **a > 0.0)) {
        Some(&bad) => Err(RidgeError::BadAlpha(bad)),
        None => Ok(()),
    }
}

/// Start and length of each voxel batch covering `v` columns.
pub(crate) fn batches(v: usize, batch: usize) -> impl Iterator<Item = (i64, i64)> {
    let batch = batch.max(1);
    (0..v)
        .step_by(batch)
        .map(move |s| (s as i64, (batch.min(v - s)) as i64))
}

pub(crate) fn torch_err(op: &'static str) -> impl FnOnce(tch::TchError) -> RidgeError {
    move |source| RidgeError::Torch { op, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_alphas_are_methods_grid() {
        let a = default_alphas();
        assert_eq!(a.len(), 9);
        assert!((a[0] - 0.1).abs() < 1e-12 && (a[8] - 1e7).abs() < 1e-3);
    }

    #[test]
    fn bad_alphas_are_refused() {
        assert!(matches!(check_alphas(&[]), Err(RidgeError::NoAlphas)));
        assert!(matches!(check_alphas(&[1.0, 0.0]), Err(RidgeError::BadAlpha(a)) if a == 0.0));
        assert!(matches!(
            check_alphas(&[f64::NAN]),
            Err(RidgeError::BadAlpha(_))
        ));
    }

    #[test]
    fn non_finite_input_names_the_array() {
        let x = Tensor::randn([10, 3], (Kind::Float, Device::Cpu));
        let y = Tensor::randn([10, 2], (Kind::Float, Device::Cpu));
        let _ = y.get(4).get(1).fill_(f64::NAN);
        let e = ridge_cv(&x, &y, &RidgeCvConfig::default(), Device::Cpu).unwrap_err();
        assert!(matches!(e, RidgeError::NonFinite { array: "y" }), "{e}");
        assert!(e.to_string().contains('y'));
    }

    #[test]
    fn row_mismatch_is_refused() {
        let x = Tensor::randn([10, 3], (Kind::Float, Device::Cpu));
        let y = Tensor::randn([11, 2], (Kind::Float, Device::Cpu));
        let e = ridge_cv(&x, &y, &RidgeCvConfig::default(), Device::Cpu).unwrap_err();
        assert!(
            e.to_string().contains("10") && e.to_string().contains("11"),
            "{e}"
        );
    }
}
