//! PCA of flattened tap features, fitted on training rows only.
//!
//! Exact, in f64, by one of three routes with the same result: the SVD of the centered
//! rows (small problems), the eigendecomposition of the n x n Gram matrix of the rows
//! (d >> n: a tap flattened to 50k-100k features), or of the d x d covariance (n >> d).
//! f64 because the Gram routes square the singular values: in f32 components beyond
//! about 1e-3 of the first singular value would be noise.
//!
//! At NSD size (8,365 images x ~16,000 features -> 1,000 components) the exact routes
//! cost an n x n (or d x d) eigendecomposition in f64 per tap; the randomized route
//! (Halko, Martinsson & Tropp 2011, as scikit-learn's `randomized_svd`) only multiplies
//! X by thin [d, k + 10] blocks, in f32, and never squares the singular values, so it
//! needs no f64. `Auto` takes it for large inputs when k is well below min(n, d).
//!
//! The signs follow sklearn's `svd_flip(u_based_decision=False)`: each component's
//! largest-magnitude entry is positive.

use tch::{Device, Kind, Tensor};

use super::{check_finite, matrix_dims, torch_err, work_kind, Result, RidgeError};

/// METHOD.md's number of components.
pub const DEFAULT_COMPONENTS: usize = 1000;

/// Elements of an f64 block moved to the device at once (256 MB): bounds the memory
/// of the Gram products and of `transform` whatever n and d are.
const BLOCK_ELEMS: i64 = 1 << 25;

/// Below this many elements (n d) the plain SVD is cheap enough.
const SMALL_ELEMS: i64 = 1 << 24;

/// `Auto` considers the randomized route only when k is at most this part of
/// min(n, d), and takes it when its estimated cost is below the exact route's.
const RANDOMIZED_MAX_FRACTION: f64 = 0.5;

/// Cost of the exact Gram route relative to a float32 multiply-add: the f64 Gram
/// product (2 min^2 max) plus the f64 symmetric eigendecomposition, weighted 15 per
/// min^3 as measured here (8,365 x 16,384: 67 s exact against 17 s randomized).
fn exact_cost(n: f64, d: f64) -> f64 {
    let (lo, hi) = (n.min(d), n.max(d));
    2.0 * lo * lo * hi + 15.0 * lo.powi(3)
}

/// Cost of the randomized route: every pass multiplies X by an [d, k + 10] block.
fn randomized_cost(n: f64, d: f64, k: f64) -> f64 {
    let passes = 2.0 * power_iterations(n.min(d), k) as f64 + 2.0;
    2.0 * passes * n * d * (k + OVERSAMPLES as f64)
}

/// scikit-learn's n_iter="auto": more passes when k is a small part of the spectrum.
fn power_iterations(min_side: f64, k: f64) -> i64 {
    if k < 0.1 * min_side {
        7
    } else {
        4
    }
}

/// Extra random directions beyond k (scikit-learn's n_oversamples).
const OVERSAMPLES: i64 = 10;

/// How [`fit_pca_with`] decomposes the centered rows.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PcaSolver {
    /// SVD when n d is small; randomized when it is large and k well below min(n, d);
    /// else the smaller of the two Gram matrices.
    #[default]
    Auto,
    /// Randomized range finder with power iterations, in f32 (approximate: the top
    /// components to ~1e-4, the last ones less where the spectrum is flat).
    Randomized,
    /// Thin SVD of the centered [n, d] rows (f64 copy of x on the device).
    Svd,
    /// eigh of the [n, n] Gram matrix X X^T, built over column blocks.
    RowGram,
    /// eigh of the [d, d] covariance X^T X, built over row blocks.
    FeatureGram,
}

impl PcaSolver {
    /// The route this choice takes for `k` components of an [n, d] matrix: `Auto`
    /// resolved by size, any other as it is.
    pub fn route(self, n: usize, d: usize, k: usize) -> PcaSolver {
        let elems = (n as i64) * (d as i64);
        match self {
            PcaSolver::Auto if elems <= SMALL_ELEMS => PcaSolver::Svd,
            PcaSolver::Auto
                if (k as f64) <= RANDOMIZED_MAX_FRACTION * n.min(d) as f64
                    && randomized_cost(n as f64, d as f64, k as f64)
                        < exact_cost(n as f64, d as f64) =>
            {
                PcaSolver::Randomized
            }
            PcaSolver::Auto if d > n => PcaSolver::RowGram,
            PcaSolver::Auto => PcaSolver::FeatureGram,
            s => s,
        }
    }
}

/// A fitted PCA.
#[derive(Debug)]
pub struct Pca {
    /// [d] training-row means (work kind)
    pub mean: Tensor,
    /// [d, k] orthonormal components, strongest first (work kind)
    pub components: Tensor,
    /// [k] variance along each component, S^2 / (n - 1) (f64)
    pub explained_variance: Tensor,
}

impl Pca {
    pub fn n_components(&self) -> usize {
        self.components.size().get(1).copied().unwrap_or(0) as usize
    }

    /// Projections [n, k] of `x` [n, d] onto the components, on the components'
    /// device. Rows go to the device in blocks, so a large host `x` is never copied
    /// whole.
    pub fn transform(&self, x: &Tensor) -> Result<Tensor> {
        let (n, d) = matrix_dims(x, "x")?;
        let expected = self.mean.size()[0] as usize;
        if d != expected {
            return Err(RidgeError::FeatureMismatch { expected, found: d });
        }
        let kind = self.components.kind();
        let device = self.components.device();
        let rows = (BLOCK_ELEMS / d as i64).max(1);
        let parts: Vec<Tensor> = (0..n as i64)
            .step_by(rows as usize)
            .map(|s| {
                let len = rows.min(n as i64 - s);
                let xb = x.narrow(0, s, len).to_device(device).to_kind(kind);
                (xb - &self.mean).matmul(&self.components)
            })
            .collect();
        Ok(Tensor::cat(&parts, 0))
    }
}

/// PCA of `x` [n, d] keeping min(k, n - 1, d) components, computed on `device`.
pub fn fit_pca(x: &Tensor, k: usize, device: Device) -> Result<Pca> {
    fit_pca_with(x, k, PcaSolver::Auto, device)
}

/// [`fit_pca`] with the decomposition chosen by the caller (tests pin each route).
pub fn fit_pca_with(x: &Tensor, k: usize, solver: PcaSolver, device: Device) -> Result<Pca> {
    let (n, d) = matrix_dims(x, "x")?;
    if n < 2 || k == 0 {
        return Err(RidgeError::BadPca { rows: n, k });
    }
    check_finite(x, "x")?;
    let k = k.min(n - 1).min(d) as i64;
    let kind = work_kind(x);
    let mean = column_mean(x, device);
    let solver = solver.route(n, d, k as usize);
    let (components, lambda) = match solver {
        PcaSolver::Randomized => {
            let (v, s) = randomized(x, &mean.to_kind(Kind::Float), k)?;
            (
                flip_signs(&v).to_kind(kind),
                s.to_kind(Kind::Double).square(),
            )
        }
        PcaSolver::RowGram => row_gram(x, &mean, k, kind)?,
        PcaSolver::FeatureGram => {
            let (lambda, v) = top_eigh(&feature_gram(x, &mean), k)?;
            (flip_signs(&v).to_kind(kind), lambda)
        }
        _ => {
            let xc = x.to_device(device).to_kind(Kind::Double) - &mean;
            let (_, s, v) = xc.f_svd(true, true).map_err(torch_err("SVD for PCA"))?;
            let v = v.narrow(1, 0, k);
            (flip_signs(&v).to_kind(kind), s.narrow(0, 0, k).square())
        }
    };
    Ok(Pca {
        mean: mean.to_kind(kind),
        components,
        explained_variance: lambda / (n as f64 - 1.0),
    })
}

/// [d] f64 column means, summed over row blocks on the device.
fn column_mean(x: &Tensor, device: Device) -> Tensor {
    let (n, d) = (x.size()[0], x.size()[1]);
    let rows = (BLOCK_ELEMS / d).max(1);
    let mut sum = Tensor::zeros([d], (Kind::Double, device));
    for s in (0..n).step_by(rows as usize) {
        let xb = x
            .narrow(0, s, rows.min(n - s))
            .to_device(device)
            .to_kind(Kind::Double);
        sum += xb.sum_dim_intlist(0, false, Kind::Double);
    }
    sum / n as f64
}

/// Centered column block start..start+len of `x` as f64 on the mean's device.
fn centered_cols(x: &Tensor, mean: &Tensor, start: i64, len: i64) -> Tensor {
    x.narrow(1, start, len)
        .to_device(mean.device())
        .to_kind(Kind::Double)
        - mean.narrow(0, start, len)
}

/// [d, d] X_c^T X_c over row blocks.
fn feature_gram(x: &Tensor, mean: &Tensor) -> Tensor {
    let (n, d) = (x.size()[0], x.size()[1]);
    let rows = (BLOCK_ELEMS / d).max(1);
    let mut g = Tensor::zeros([d, d], (Kind::Double, mean.device()));
    for s in (0..n).step_by(rows as usize) {
        let xb = x
            .narrow(0, s, rows.min(n - s))
            .to_device(mean.device())
            .to_kind(Kind::Double)
            - mean;
        g += xb.transpose(0, 1).matmul(&xb);
    }
    g
}

/// The k largest eigenvalues of a symmetric PSD matrix (descending, clamped at 0) and
/// their eigenvectors [m, k].
fn top_eigh(g: &Tensor, k: i64) -> Result<(Tensor, Tensor)> {
    let (lambda, vecs) = g.f_linalg_eigh("L").map_err(torch_err("eigh for PCA"))?;
    let m = lambda.size()[0];
    // eigh sorts ascending: the top k are the last k, reversed
    let lambda = lambda.narrow(0, m - k, k).flip([0]).clamp_min(0.0);
    let vecs = vecs.narrow(1, m - k, k).flip([1]);
    Ok((lambda, vecs))
}

/// d >> n: components V = X_c^T U S^-1 from the eigenvectors U of the [n, n] Gram
/// matrix, built and projected one column block at a time (d x k output in the work
/// kind; only the blocks are f64).
fn row_gram(x: &Tensor, mean: &Tensor, k: i64, kind: Kind) -> Result<(Tensor, Tensor)> {
    let (n, d) = (x.size()[0], x.size()[1]);
    let device = mean.device();
    let cols = (BLOCK_ELEMS / n).max(1);
    let mut gram = Tensor::zeros([n, n], (Kind::Double, device));
    for s in (0..d).step_by(cols as usize) {
        let xb = centered_cols(x, mean, s, cols.min(d - s));
        gram += xb.matmul(&xb.transpose(0, 1));
    }
    let (lambda, u) = top_eigh(&gram, k)?;
    drop(gram);
    // A component whose eigenvalue is rounding noise has no direction to recover;
    // it is set to zero (and so projects everything to 0) instead of amplified noise.
    let lmax = lambda.max().double_value(&[]);
    let tol = lmax * (n.max(d) as f64) * f64::EPSILON;
    let valid = lambda.gt(tol);
    let inv_s = lambda.clamp_min(tol.max(f64::MIN_POSITIVE)).rsqrt() * valid.to_kind(Kind::Double);
    let components = Tensor::zeros([d, k], (kind, device));
    // svd_flip across blocks: the first largest |entry| of each component and its sign
    let mut best_abs = Tensor::full([k], -1.0, (Kind::Double, device));
    let mut best_sign = Tensor::ones([k], (Kind::Double, device));
    for s in (0..d).step_by(cols as usize) {
        let len = cols.min(d - s);
        let vb = centered_cols(x, mean, s, len).transpose(0, 1).matmul(&u) * &inv_s;
        let (abs_max, idx) = vb.abs().max_dim(0, false);
        let sign = vb.gather(0, &idx.unsqueeze(0), false).squeeze_dim(0).sign();
        let better = abs_max.gt_tensor(&best_abs);
        best_abs = abs_max.where_self(&better, &best_abs);
        best_sign = sign.where_self(&better, &best_sign);
        components.narrow(0, s, len).copy_(&vb);
    }
    // a zero component has sign 0: keep it as is
    let sign = best_sign.where_self(&best_sign.ne(0.0), &best_sign.ones_like());
    Ok((components * sign.to_kind(kind), lambda))
}

/// Whether `x` can enter the products whole: already f32 on the mean's device, so no
/// copy is made (the centering is applied to the thin products instead).
fn in_place(x: &Tensor, mean: &Tensor) -> bool {
    x.kind() == Kind::Float && x.device() == mean.device()
}

/// X_c q for centered rows X_c = X - mean: X q - 1 (mean q), so X is never copied
/// centered; a row block at a time when X must move or convert: [n, l].
fn times(x: &Tensor, mean: &Tensor, q: &Tensor) -> Tensor {
    let shift = mean.unsqueeze(0).matmul(q);
    if in_place(x, mean) {
        return x.matmul(q) - shift;
    }
    let (n, d) = (x.size()[0], x.size()[1]);
    let rows = (BLOCK_ELEMS / d).max(1);
    let parts: Vec<Tensor> = (0..n)
        .step_by(rows as usize)
        .map(|s| {
            let xb = x
                .narrow(0, s, rows.min(n - s))
                .to_device(mean.device())
                .to_kind(Kind::Float);
            xb.matmul(q) - &shift
        })
        .collect();
    Tensor::cat(&parts, 0)
}

/// X_c^T p = X^T p - mean (1^T p): [d, l].
fn times_t(x: &Tensor, mean: &Tensor, p: &Tensor) -> Tensor {
    let shift = mean
        .unsqueeze(1)
        .matmul(&p.sum_dim_intlist(0, true, Kind::Float));
    if in_place(x, mean) {
        return x.transpose(0, 1).matmul(p) - shift;
    }
    let (n, d) = (x.size()[0], x.size()[1]);
    let rows = (BLOCK_ELEMS / d).max(1);
    let mut out = Tensor::zeros([d, p.size()[1]], (Kind::Float, mean.device()));
    for s in (0..n).step_by(rows as usize) {
        let len = rows.min(n - s);
        let xb = x
            .narrow(0, s, len)
            .to_device(mean.device())
            .to_kind(Kind::Float);
        out += xb.transpose(0, 1).matmul(&p.narrow(0, s, len));
    }
    out - shift
}

fn orthonormal(a: &Tensor) -> Result<Tensor> {
    let (q, _) = Tensor::f_linalg_qr(a, "reduced").map_err(torch_err("QR for randomized PCA"))?;
    Ok(q)
}

/// A well-conditioned basis of `a`'s columns [m, l], m >= l: the permuted unit lower
/// factor P L of a = P L U (scikit-learn's LU normalizer). It spans what `a` spans and
/// keeps power iterations from collapsing onto the top direction, at a fraction of a
/// Householder QR's cost (getrf against geqrf + orgqr: 8 s of 18 at NSD size); the
/// last step still orthonormalizes with QR.
fn lu_basis(a: &Tensor) -> Result<Tensor> {
    let (m, l) = (a.size()[0], a.size()[1]);
    let (lu, pivots) =
        Tensor::f_linalg_lu_factor(a, true).map_err(torch_err("LU for randomized PCA"))?;
    let unit = lu.tril(-1) + Tensor::eye_m(m, l, (lu.kind(), lu.device()));
    // LAPACK's pivots are 1-based row swaps, applied in order: replay them to find
    // which row of `a` each row of L U came from.
    let swaps = Vec::<i64>::try_from(pivots.to_device(Device::Cpu).to_kind(Kind::Int64))
        .map_err(torch_err("LU pivots"))?;
    let mut perm: Vec<i64> = (0..m).collect();
    for (i, &p) in swaps.iter().enumerate() {
        perm.swap(i, (p - 1) as usize);
    }
    // a = P (L U): row perm[i] of a is row i of L U, so row perm[i] of P L is row i of L.
    let perm = Tensor::from_slice(&perm).to_device(unit.device());
    Ok(unit.zeros_like().index_copy(0, &perm, &unit))
}

/// The top k right singular vectors [d, k] and singular values [k] of X_c, by the
/// randomized range finder: Q spans X_c's top row space after power iterations
/// (renormalized by LU at each step, so the small directions are not lost to rounding
/// in f32), and the SVD of the small [k + 10, d] matrix P^T X_c gives the components. The
/// starting block is drawn from a fixed seed in Rust, not libtorch's global generator:
/// the same inputs give the same components, and no other computation's random stream
/// moves.
fn randomized(x: &Tensor, mean: &Tensor, k: i64) -> Result<(Tensor, Tensor)> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    let (n, d) = (x.size()[0], x.size()[1]);
    let l = (k + OVERSAMPLES).min(n.min(d));
    let iterations = power_iterations(n.min(d) as f64, k as f64);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x05ee_d9ca);
    let omega: Vec<f32> = (0..d * l)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let mut q = Tensor::from_slice(&omega)
        .view([d, l])
        .to_device(mean.device());
    for _ in 0..iterations {
        let p = lu_basis(&times(x, mean, &q))?;
        q = lu_basis(&times_t(x, mean, &p))?;
    }
    let p = orthonormal(&times(x, mean, &q))?;
    // B = P^T X_c = (X_c^T P)^T: its right singular vectors are X_c's.
    let bt = times_t(x, mean, &p);
    let (_, s, v) = bt
        .transpose(0, 1)
        .f_svd(true, true)
        .map_err(torch_err("SVD for randomized PCA"))?;
    let v = v.narrow(1, 0, k).contiguous();
    Ok((v, s.narrow(0, 0, k)))
}

/// Flips each column of `v` [d, k] so that its first largest-magnitude entry is
/// positive (sklearn's `svd_flip` on the rows of Vt).
fn flip_signs(v: &Tensor) -> Tensor {
    let idx = v.abs().argmax(0, true);
    let sign = v.gather(0, &idx, false).sign();
    let sign = sign.where_self(&sign.ne(0.0), &sign.ones_like());
    v * sign
}

#[cfg(test)]
mod tests {
    use super::*;

    fn low_rank(n: i64, d: i64) -> Tensor {
        tch::manual_seed(5);
        let scales = Tensor::logspace(1.0, -2.0, 12, 10.0, (Kind::Float, Device::Cpu));
        let f = Tensor::randn([n, 12], (Kind::Float, Device::Cpu)) * scales;
        f.matmul(&Tensor::randn([12, d], (Kind::Float, Device::Cpu)))
            + Tensor::randn([n, d], (Kind::Float, Device::Cpu)) * 0.01
            + 2.0
    }

    #[test]
    fn routes_agree() {
        for (n, d) in [(40, 300), (300, 40)] {
            let x = low_rank(n, d);
            let a = fit_pca_with(&x, 8, PcaSolver::Svd, Device::Cpu).unwrap();
            for solver in [PcaSolver::RowGram, PcaSolver::FeatureGram] {
                let b = fit_pca_with(&x, 8, solver, Device::Cpu).unwrap();
                assert!(
                    a.components.allclose(&b.components, 1e-4, 1e-5, false),
                    "{solver:?} components differ at n {n}, d {d}"
                );
                assert!(a
                    .explained_variance
                    .allclose(&b.explained_variance, 1e-8, 1e-8, false));
                let (ta, tb) = (a.transform(&x).unwrap(), b.transform(&x).unwrap());
                assert!(ta.allclose(&tb, 1e-4, 1e-4, false));
            }
        }
    }

    /// A spectrum that decays like a tap's (power law) plus noise.
    fn decaying(n: i64, d: i64) -> Tensor {
        tch::manual_seed(11);
        let r = 60;
        let scales = Tensor::arange(r, (Kind::Float, Device::Cpu))
            .f_add_scalar(1.0)
            .unwrap()
            .pow_tensor_scalar(-1.0)
            * 10.0;
        let f = Tensor::randn([n, r], (Kind::Float, Device::Cpu)) * scales;
        f.matmul(&Tensor::randn([r, d], (Kind::Float, Device::Cpu)))
            + Tensor::randn([n, d], (Kind::Float, Device::Cpu)) * 0.05
            + 1.0
    }

    #[test]
    fn randomized_components_span_the_exact_ones() {
        let x = decaying(300, 2000);
        let k = 40;
        let exact = fit_pca_with(&x, k, PcaSolver::RowGram, Device::Cpu).unwrap();
        let fast = fit_pca_with(&x, k, PcaSolver::Randomized, Device::Cpu).unwrap();
        assert_eq!(fast.n_components(), k);
        let ortho = fast.components.transpose(0, 1).matmul(&fast.components);
        assert!(ortho.allclose(
            &Tensor::eye(k as i64, (Kind::Float, Device::Cpu)),
            1e-4,
            1e-4,
            false
        ));
        // Principal angles between the spans of the exact top m and the randomized k:
        // the cosines are the singular values of A^T B.
        for m in [10, 30] {
            let a = exact.components.narrow(1, 0, m).to_kind(Kind::Double);
            let b = fast.components.to_kind(Kind::Double);
            let (_, cos, _) = a.transpose(0, 1).matmul(&b).svd(true, false);
            let worst = cos.min().double_value(&[]);
            assert!(worst > 0.9999, "top {m}: smallest cosine {worst}");
        }
        let ve = Vec::<f64>::try_from(&exact.explained_variance).unwrap();
        let vf = Vec::<f64>::try_from(&fast.explained_variance).unwrap();
        for c in 0..30 {
            assert!(
                (vf[c] / ve[c] - 1.0).abs() < 1e-3,
                "variance {c}: {} vs {}",
                vf[c],
                ve[c]
            );
        }
        // Projections of the training rows agree where the components do.
        let (pe, pf) = (exact.transform(&x).unwrap(), fast.transform(&x).unwrap());
        let first = |t: &Tensor| t.narrow(1, 0, 10);
        assert!(first(&pe).allclose(&first(&pf), 1e-3, 1e-2, false));
        // Deterministic: the same inputs, the same components.
        let again = fit_pca_with(&x, k, PcaSolver::Randomized, Device::Cpu).unwrap();
        assert!(again.components.equal(&fast.components));
    }

    #[test]
    fn auto_goes_randomized_only_for_large_inputs_and_small_k() {
        let auto = |n, d, k| PcaSolver::Auto.route(n, d, k);
        // NSD subj01 at a 16,384-value tap: randomized; the demo brain's fits: exact.
        assert_eq!(auto(8365, 16384, 1000), PcaSolver::Randomized);
        assert_eq!(auto(765, 16384, 300), PcaSolver::Svd);
        // A quarter of NSD: k = 1000 is under half of the 2,125 rows, but ten passes
        // over X cost more than the 2,125-row Gram (measured: 64.8 s randomized
        // against 34.7 s exact for the ten taps).
        assert_eq!(auto(2125, 16384, 1000), PcaSolver::RowGram);
        // NSD's 7,840-value tap: 59 s exact, about 8 s randomized.
        assert_eq!(auto(8365, 7840, 1000), PcaSolver::Randomized);
        assert_eq!(auto(4250, 16384, 1000), PcaSolver::Randomized);
        assert_eq!(auto(1500, 16384, 1000), PcaSolver::RowGram);
        // Large, but k near min(n, d): the randomized route would gain nothing.
        assert_eq!(auto(8365, 16384, 5000), PcaSolver::RowGram);
        assert_eq!(auto(40000, 4096, 1000), PcaSolver::FeatureGram);
        assert_eq!(auto(40000, 4096, 200), PcaSolver::Randomized);
        assert_eq!(auto(40000, 2000, 1500), PcaSolver::FeatureGram);
        assert_eq!(auto(100, 500, 20), PcaSolver::Svd);
        assert_eq!(
            PcaSolver::RowGram.route(8365, 16384, 1000),
            PcaSolver::RowGram
        );
    }

    #[test]
    fn components_are_orthonormal_and_clipped() {
        let x = low_rank(10, 30);
        let p = fit_pca(&x, 1000, Device::Cpu).unwrap();
        assert_eq!(p.n_components(), 9, "k = min(requested, n - 1, d)");
        let gram = p.components.transpose(0, 1).matmul(&p.components);
        assert!(gram.allclose(
            &Tensor::eye(9, (Kind::Float, Device::Cpu)),
            1e-4,
            1e-4,
            false
        ));
        let e = fit_pca(&x, 3, Device::Cpu)
            .unwrap()
            .transform(&x.narrow(1, 0, 5))
            .unwrap_err();
        assert!(e.to_string().contains("30"), "{e}");
    }
}
