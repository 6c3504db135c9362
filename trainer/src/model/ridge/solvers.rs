//! Ridge solvers: functions of data, each from one SVD of the centered design.
//!
//! With `x` centered (column means subtracted) and `x = U S V^T` its thin SVD, the
//! ridge weights for targets `y` (centered too) and strength alpha are
//! `V diag(s / (s^2 + alpha)) U^T y`, so one SVD serves every alpha and every voxel;
//! the intercept is `mean(y) - mean(x) @ coef` (sklearn's `fit_intercept=True`).

use tch::{Device, Kind, Tensor};

use super::{
    batches, check_alphas, check_xy, matrix_dims, torch_err, work_kind, Result, RidgeError,
};

/// A linear map from features to voxels.
#[derive(Debug)]
pub struct Weights {
    /// [p, v]
    pub coef: Tensor,
    /// [v]
    pub intercept: Tensor,
}

impl Weights {
    /// Predictions [n, v] for `x` [n, p], on the weights' device.
    pub fn predict(&self, x: &Tensor) -> Result<Tensor> {
        linear_predict(&self.coef, &self.intercept, x)
    }
}

/// `x` [n, p] @ `coef` [p, v] + `intercept` [v] -> [n, v], on `coef`'s device and kind.
pub(crate) fn linear_predict(coef: &Tensor, intercept: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (_, p) = matrix_dims(x, "x")?;
    let expected = coef.size().first().copied().unwrap_or(0) as usize;
    if p != expected {
        return Err(RidgeError::FeatureMismatch { expected, found: p });
    }
    let x = x.to_device(coef.device()).to_kind(coef.kind());
    Ok(x.matmul(coef) + intercept)
}

/// The thin SVD of the column-centered design, computed in f64 (the singular values'
/// small end matters for small alphas), with U and V handed back in the work kind.
struct CenteredSvd {
    /// [p] column means of x (work kind)
    x_mean: Tensor,
    /// [n, r] left singular vectors, r = min(n, p) (work kind)
    u: Tensor,
    /// [r] singular values (f64)
    s: Tensor,
    /// [p, r] right singular vectors (work kind)
    v: Tensor,
}

fn centered_svd(x: &Tensor, device: Device) -> Result<CenteredSvd> {
    let kind = work_kind(x);
    let x64 = x.to_device(device).to_kind(Kind::Double);
    let mean = x64.mean_dim(0, false, Kind::Double);
    let xc = x64 - &mean;
    // `Tensor::svd` rather than `linalg_svd`: tch always passes linalg_svd a driver
    // string, which libtorch refuses on CPU.
    let (u, s, v) = xc.f_svd(true, true).map_err(torch_err("SVD of x"))?;
    Ok(CenteredSvd {
        x_mean: mean.to_kind(kind),
        u: u.to_kind(kind),
        s,
        v: v.to_kind(kind),
    })
}

/// Ridge weights of `y` [n, v] on `x` [n, p] for each of `alphas` (one [`Weights`] per
/// alpha, in order), from one SVD of `x`.
///
/// Voxels are solved `voxel_batch` at a time, so besides the result the working set is
/// 4 bytes x (n r + p r + n b + r b + p b), b = voxel_batch, r = min(n, p) (plus an f64
/// copy of x during the SVD). The result itself is alphas x p x v: for many voxels and
/// many alphas use cross-validation ([`super::ridge_cv`]) or
/// [`solve_ridge_svd_per_voxel`], which keep one alpha per voxel.
pub fn solve_ridge_svd(
    x: &Tensor,
    y: &Tensor,
    alphas: &[f64],
    voxel_batch: usize,
    device: Device,
) -> Result<Vec<Weights>> {
    let (_, p, v) = check_xy(x, y)?;
    check_alphas(alphas)?;
    let kind = work_kind(x);
    let svd = centered_svd(x, device)?;
    let opts = (kind, device);
    let mut out: Vec<Weights> = alphas
        .iter()
        .map(|_| Weights {
            coef: Tensor::zeros([p as i64, v as i64], opts),
            intercept: Tensor::zeros([v as i64], opts),
        })
        .collect();
    for (start, len) in batches(v, voxel_batch) {
        let (uty, y_mean) = project_targets(&svd, y, Columns { start, len }, kind, device);
        for (w, &alpha) in out.iter_mut().zip(alphas) {
            // [r, 1]: the same shrinkage for every voxel of the batch
            let d = (&svd.s / (svd.s.square() + alpha))
                .to_kind(kind)
                .unsqueeze(1);
            write_batch(w, &svd, &(&uty * d), &y_mean, Columns { start, len });
        }
    }
    Ok(out)
}

/// Ridge weights of `y` [n, v] on `x` [n, p] where voxel j has its own strength
/// `alphas[j]` (the refit after cross-validation), from one SVD of `x`. Same memory as
/// [`solve_ridge_svd`] with a single alpha.
pub fn solve_ridge_svd_per_voxel(
    x: &Tensor,
    y: &Tensor,
    alphas: &[f64],
    voxel_batch: usize,
    device: Device,
) -> Result<Weights> {
    let (_, p, v) = check_xy(x, y)?;
    check_alphas(alphas)?;
    if alphas.len() != v {
        return Err(RidgeError::AlphaCount {
            given: alphas.len(),
            voxels: v,
        });
    }
    let kind = work_kind(x);
    let svd = centered_svd(x, device)?;
    let opts = (kind, device);
    let mut w = Weights {
        coef: Tensor::zeros([p as i64, v as i64], opts),
        intercept: Tensor::zeros([v as i64], opts),
    };
    let all_alphas = Tensor::from_slice(alphas).to_device(device);
    let s = svd.s.unsqueeze(1);
    for (start, len) in batches(v, voxel_batch) {
        let (uty, y_mean) = project_targets(&svd, y, Columns { start, len }, kind, device);
        // [r, b]: each voxel's shrinkage of each singular direction
        let a = all_alphas.narrow(0, start, len).unsqueeze(0);
        let d = (&s / (s.square() + a)).to_kind(kind);
        write_batch(&mut w, &svd, &(uty * d), &y_mean, Columns { start, len });
    }
    Ok(w)
}

/// A batch of voxels: columns start..start+len of the targets and the weights.
#[derive(Clone, Copy)]
struct Columns {
    start: i64,
    len: i64,
}

/// U^T y_c [r, b] and mean(y) [b] for the voxels `cols` of `y`.
fn project_targets(
    svd: &CenteredSvd,
    y: &Tensor,
    cols: Columns,
    kind: Kind,
    device: Device,
) -> (Tensor, Tensor) {
    let Columns { start, len } = cols;
    let yb = y.narrow(1, start, len).to_device(device).to_kind(kind);
    let y_mean = yb.mean_dim(0, false, kind);
    let uty = svd.u.transpose(0, 1).matmul(&(yb - &y_mean));
    (uty, y_mean)
}

/// Stores coef = V (shrunk U^T y) [p, b] and its intercept into the columns `cols` of `w`.
fn write_batch(
    w: &mut Weights,
    svd: &CenteredSvd,
    shrunk: &Tensor,
    y_mean: &Tensor,
    cols: Columns,
) {
    let Columns { start, len } = cols;
    let coef = svd.v.matmul(shrunk);
    let intercept = y_mean - svd.x_mean.unsqueeze(0).matmul(&coef).squeeze_dim(0);
    w.coef.narrow(1, start, len).copy_(&coef);
    w.intercept.narrow(0, start, len).copy_(&intercept);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: i64, p: i64, v: i64, kind: Kind) -> (Tensor, Tensor) {
        tch::manual_seed(7);
        let x = Tensor::randn([n, p], (kind, Device::Cpu)) + 3.0;
        let w = Tensor::randn([p, v], (kind, Device::Cpu));
        let y = x.matmul(&w) + Tensor::randn([n, v], (kind, Device::Cpu)) * 2.0 - 1.5;
        (x, y)
    }

    #[test]
    fn coef_solves_the_normal_equations() {
        let (x, y) = data(60, 8, 5, Kind::Double);
        let alpha = 3.5;
        let w = solve_ridge_svd(&x, &y, &[alpha], 2, Device::Cpu).unwrap();
        let xc = &x - x.mean_dim(0, true, Kind::Double);
        let yc = &y - y.mean_dim(0, true, Kind::Double);
        // (Xc'Xc + alpha I) coef = Xc'Yc
        let lhs = (xc.transpose(0, 1).matmul(&xc)
            + Tensor::eye(8, (Kind::Double, Device::Cpu)) * alpha)
            .matmul(&w[0].coef);
        let rhs = xc.transpose(0, 1).matmul(&yc);
        let err = (&lhs - &rhs).abs().max().double_value(&[]);
        let scale = rhs.abs().max().double_value(&[]);
        assert!(
            err < 1e-10 * scale,
            "normal equations off by {err} (scale {scale})"
        );
        // the intercept makes the mean prediction the mean target
        let pred = w[0].predict(&x).unwrap();
        let diff = (pred.mean_dim(0, false, Kind::Double) - y.mean_dim(0, false, Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-10, "{diff}");
    }

    #[test]
    fn voxel_batches_do_not_change_the_result() {
        let (x, y) = data(50, 6, 13, Kind::Float);
        let alphas = [0.1, 10.0, 1e3];
        let whole = solve_ridge_svd(&x, &y, &alphas, 1000, Device::Cpu).unwrap();
        let parts = solve_ridge_svd(&x, &y, &alphas, 4, Device::Cpu).unwrap();
        for (a, b) in whole.iter().zip(&parts) {
            assert!(a.coef.allclose(&b.coef, 1e-5, 1e-6, false));
            assert!(a.intercept.allclose(&b.intercept, 1e-5, 1e-6, false));
        }
        // per-voxel alphas reproduce the fixed-alpha solutions column by column
        let per: Vec<f64> = (0..13).map(|j| alphas[j % 3]).collect();
        let pv = solve_ridge_svd_per_voxel(&x, &y, &per, 5, Device::Cpu).unwrap();
        for j in 0..13i64 {
            let ref_w = &whole[j as usize % 3];
            assert!(pv
                .coef
                .select(1, j)
                .allclose(&ref_w.coef.select(1, j), 1e-5, 1e-6, false));
        }
    }

    #[test]
    fn wide_designs_are_solved() {
        // p > n: the thin SVD has rank n - 1 after centering
        let (x, y) = data(20, 50, 3, Kind::Double);
        let w = solve_ridge_svd(&x, &y, &[1.0], 8, Device::Cpu).unwrap();
        let xc = &x - x.mean_dim(0, true, Kind::Double);
        let yc = &y - y.mean_dim(0, true, Kind::Double);
        let lhs = (xc.transpose(0, 1).matmul(&xc) + Tensor::eye(50, (Kind::Double, Device::Cpu)))
            .matmul(&w[0].coef);
        let rhs = xc.transpose(0, 1).matmul(&yc);
        assert!(lhs.allclose(&rhs, 1e-8, 1e-8, false));
    }

    #[test]
    fn wrong_alpha_count_is_refused() {
        let (x, y) = data(20, 3, 4, Kind::Float);
        let e = solve_ridge_svd_per_voxel(&x, &y, &[1.0, 2.0], 8, Device::Cpu).unwrap_err();
        assert!(
            e.to_string()
                .contains("2 per-voxel alphas given for 4 voxels"),
            "{e}"
        );
    }
}
