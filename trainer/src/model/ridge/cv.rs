//! K-fold cross-validation of ridge over a grid of alphas, and alpha selection.
//!
//! Splitting ([`kfold`]), scoring ([`cross_validate`], a [folds, alphas, voxels] array)
//! and choosing ([`select_alphas`], per voxel or shared) are separate functions, as in
//! himalaya; [`super::ridge_cv`] composes them with the refit.
//!
//! How a fold is scored without predicting. For the fold's training rows (centered),
//! one decomposition X_t = U S V^T gives every alpha's weights in the V basis,
//! w(alpha) = diag(1 / (s^2 + alpha)) beta with beta = V^T X_t^T y_t. The validation
//! error of those weights needs only inner products with the validation rows: with
//! A = (X_val - mean) V,
//!
//! ```text
//! SSE(alpha) = |y_val - mean_t|^2 - 2 (A^T y_val) . w + w^T (A^T A) w
//! ```
//!
//! (and Pearson r likewise with centered terms). All of X^T y for every fold comes from
//! one product per fold's validation rows (the training rows' product is the total
//! minus the fold's), and A^T A is a small [r, r] matrix per fold, so each alpha costs
//! r^2 per voxel instead of himalaya's n_val x n_train hat matrix times y. The fold's
//! SVD is taken from its f64 Gram matrix (eigh of X_t^T X_t gives V and S^2): the Gram
//! matrices of all folds come from one pass over x, and f64 keeps the small singular
//! values that the squaring would lose in f32.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};

use super::{batches, check_alphas, check_xy, torch_err, work_kind, Result, RidgeError, Scorer};

/// One split of the training rows: fit on `train`, score on `val` (row indices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fold {
    pub train: Vec<i64>,
    pub val: Vec<i64>,
}

/// K folds over `n` rows. Without a seed the validation sets are contiguous blocks in
/// row order, the first `n % k` one row larger (sklearn's `KFold(k)`); with a seed the
/// rows are permuted first (ChaCha8 from the seed; not numpy's permutation, so shuffled
/// folds differ from sklearn's `KFold(shuffle=True)`). Both index lists are sorted.
pub fn kfold(n: usize, k: usize, shuffle_seed: Option<u64>) -> Result<Vec<Fold>> {
    if k < 2 {
        return Err(RidgeError::TooFewFolds(k));
    }
    if n < k {
        return Err(RidgeError::TooFewRows { rows: n, folds: k });
    }
    let mut order: Vec<i64> = (0..n as i64).collect();
    if let Some(seed) = shuffle_seed {
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    }
    let mut folds = Vec::with_capacity(k);
    let mut start = 0;
    for i in 0..k {
        let size = n / k + usize::from(i < n % k);
        let mut val = order[start..start + size].to_vec();
        let mut train: Vec<i64> = order[..start]
            .iter()
            .chain(&order[start + size..])
            .copied()
            .collect();
        val.sort_unstable();
        train.sort_unstable();
        folds.push(Fold { train, val });
        start += size;
    }
    Ok(folds)
}

/// What [`cross_validate`] scores: every fold x every alpha, voxels `voxel_batch` at a
/// time.
#[derive(Debug, Clone, Copy)]
pub struct CvGrid<'a> {
    pub folds: &'a [Fold],
    pub alphas: &'a [f64],
    pub scorer: Scorer,
    pub voxel_batch: usize,
}

/// Elements of the [r, alphas x voxels] weights scored in one product (128 MB in f32);
/// with r = 1000 and the default voxel batch all 9 default alphas fit in one.
const ALPHA_CHUNK_ELEMS: i64 = 1 << 25;

/// A fold's fixed part: its decomposition and validation statistics (all on the device).
struct FoldModel {
    /// [n_f] validation row indices (i64)
    val: Tensor,
    n_t: f64,
    n_f: f64,
    /// [n_f, p] the validation rows of the globally centered x
    x_val: Tensor,
    /// [p, r] right singular vectors of the centered training rows
    v: Tensor,
    /// [r] their squared singular values (f64)
    lambda: Tensor,
    /// [p] training-row and validation-row means of the centered x
    m_t: Tensor,
    m_f: Tensor,
    /// w -> |A w|^2 for the validation rows in the V basis
    quad: Quad,
}

/// The validation Gram A^T A [r, r], or A itself [n_f, r] when it has fewer rows
/// (then |A w|^2 is the cheaper product).
enum Quad {
    Gram(Tensor),
    Rows(Tensor),
}

impl Quad {
    /// [r, b] -> [b]: w_j^T A^T A w_j for each column.
    fn apply(&self, w: &Tensor, kind: Kind) -> Tensor {
        match self {
            Quad::Gram(h) => (h.matmul(w) * w).sum_dim_intlist(0, false, kind),
            Quad::Rows(a) => a.matmul(w).square().sum_dim_intlist(0, false, kind),
        }
    }
}

fn check_folds(folds: &[Fold], n: usize) -> Result<()> {
    if folds.len() < 2 {
        return Err(RidgeError::TooFewFolds(folds.len()));
    }
    for fold in folds {
        if fold.val.is_empty() || fold.train.is_empty() {
            return Err(RidgeError::TooFewRows {
                rows: n,
                folds: folds.len(),
            });
        }
        if let Some(&bad) = fold
            .val
            .iter()
            .chain(&fold.train)
            .find(|&&i| i < 0 || i as usize >= n)
        {
            return Err(RidgeError::RowIndex {
                index: bad,
                rows: n,
            });
        }
    }
    Ok(())
}

/// Decomposes every fold's training rows. `xc` [n, p] is x centered on all its rows
/// (ridge with an intercept does not depend on that shift; it keeps the per-fold
/// corrections below small and well conditioned).
fn fold_models(xc: &Tensor, folds: &[Fold], scorer: Scorer, kind: Kind) -> Result<Vec<FoldModel>> {
    let device = xc.device();
    let (n, p) = (xc.size()[0], xc.size()[1]);
    let x64 = xc.to_kind(Kind::Double);
    let g_all = x64.transpose(0, 1).matmul(&x64);
    let s_all = x64.sum_dim_intlist(0, false, Kind::Double);
    let mut out = Vec::with_capacity(folds.len());
    for fold in folds {
        let val = Tensor::from_slice(&fold.val).to_device(device);
        let n_f = fold.val.len() as f64;
        let n_t = n as f64 - n_f;
        let xf = x64.index_select(0, &val);
        let g_f = xf.transpose(0, 1).matmul(&xf);
        let s_f = xf.sum_dim_intlist(0, false, Kind::Double);
        let m_t = (&s_all - &s_f) / n_t;
        let m_f = &s_f / n_f;
        let g_t = &g_all - &g_f - outer(&m_t, &m_t) * n_t;
        let (lambda, vecs) = g_t
            .f_linalg_eigh("L")
            .map_err(torch_err("eigh of a fold's Gram matrix"))?;
        // Directions the training rows do not span (p >= n_t) have exactly zero weight
        // in the ridge solution; drop them rather than let rounding noise in X^T y
        // (f32) through at 1 / alpha. Threshold: numpy's matrix-rank tolerance.
        let lmax = lambda.max().double_value(&[]).max(0.0);
        let tol = lmax * (n_t.max(p as f64)) * f64::EPSILON;
        let keep = lambda.gt(tol).nonzero().squeeze_dim(1);
        let lambda = lambda.index_select(0, &keep);
        let v64 = vecs.index_select(1, &keep);
        let r = lambda.size()[0];
        // the validation rows about the point the score measures from: the training
        // mean for R^2 (predictions carry it), their own mean for Pearson r
        let center = match scorer {
            Scorer::R2 => &m_t,
            Scorer::Pearson => &m_f,
        };
        let quad = if (fold.val.len() as i64) < r {
            Quad::Rows((&xf - center).matmul(&v64).to_kind(kind))
        } else {
            let d = &m_f - center;
            let g_v = &g_f - outer(&m_f, &m_f) * n_f + outer(&d, &d) * n_f;
            Quad::Gram(v64.transpose(0, 1).matmul(&g_v).matmul(&v64).to_kind(kind))
        };
        out.push(FoldModel {
            val,
            n_t,
            n_f,
            x_val: xf.to_kind(kind),
            v: v64.to_kind(kind),
            lambda,
            m_t: m_t.to_kind(kind),
            m_f: m_f.to_kind(kind),
            quad,
        });
    }
    Ok(out)
}

fn outer(a: &Tensor, b: &Tensor) -> Tensor {
    a.unsqueeze(1) * b.unsqueeze(0)
}

/// Scores of ridge fits of `y` [n, v] on `x` [n, p]: [folds, alphas, v] in the work
/// kind, on `device`. Each fold fits on its training rows (x and y centered on them,
/// i.e. with an intercept) and scores its validation rows with `grid.scorer`.
///
/// Peak memory, in bytes (f32; twice that for f64 input), for K folds, A alphas,
/// b = voxel_batch, r <= p the fold rank and n_f the largest fold:
///
/// ```text
/// persistent   4 (n p + K (p r + r^2) + K A v)        fold rows, V, A^T A; scores
/// per batch    4 b (n + n_f + (K + 3) p + 3 r + 3 A)  y batch, X^T y per fold, terms
///            + 8 min(A r b, 2^25)                     the alphas' weights and H w
/// transient    8 (n p + 4 p^2)                        f64 Grams while decomposing
/// ```
///
/// At NSD scale (n 8000, p 1000, v 20000, K 5, A 9, b 2048): 0.08 + 0.32 GB (the f64
/// transient, 0.1 GB, is gone before the batches start), besides `y` itself, which may
/// stay on the host: it is moved to `device` one batch at a time.
pub fn cross_validate(x: &Tensor, y: &Tensor, grid: &CvGrid, device: Device) -> Result<Tensor> {
    let (n, _, v) = check_xy(x, y)?;
    check_alphas(grid.alphas)?;
    check_folds(grid.folds, n)?;
    let kind = work_kind(x);
    let xd = x.to_device(device).to_kind(kind);
    let xc = &xd - xd.mean_dim(0, true, kind);
    drop(xd);
    let models = fold_models(&xc, grid.folds, grid.scorer, kind)?;
    drop(xc);
    let n_alphas = grid.alphas.len() as i64;
    let alphas_t = Tensor::from_slice(grid.alphas).to_device(device);
    let scores = Tensor::zeros([models.len() as i64, n_alphas, v as i64], (kind, device));
    for (start, len) in batches(v, grid.voxel_batch) {
        let yb = y.narrow(1, start, len).to_device(device).to_kind(kind);
        let yc = &yb - yb.mean_dim(0, true, kind);
        drop(yb);
        // per fold: X_f^T y_f [p, b], sum of y_f [b], centered sum of squares of y_f [b]
        let mut cross = Vec::with_capacity(models.len());
        for m in &models {
            let yf = yc.index_select(0, &m.val);
            let sy = yf.sum_dim_intlist(0, false, kind);
            let sst = (&yf - &sy / m.n_f).square().sum_dim_intlist(0, false, kind);
            cross.push((m.x_val.transpose(0, 1).matmul(&yf), sy, sst));
        }
        let c_all = cross
            .iter()
            .map(|c| &c.0)
            .fold(Tensor::zeros_like(&cross[0].0), |acc, c| acc + c);
        let sy_all = yc.sum_dim_intlist(0, false, kind);
        drop(yc);
        for (k, (m, (c_f, sy_f, sst))) in models.iter().zip(&cross).enumerate() {
            let my_t = (&sy_all - sy_f) / m.n_t;
            let my_f = sy_f / m.n_f;
            // X_t^T y_t for the fold's training rows, both centered on those rows
            let c_t = &c_all - c_f - outer(&m.m_t, &my_t) * m.n_t;
            let beta = m.v.transpose(0, 1).matmul(&c_t);
            drop(c_t);
            // X_v^T y_v with the validation rows about their own means; R^2 measures
            // from the training means instead, which adds a rank-one term
            let mut c_v = c_f - outer(&m.m_f, &my_f) * m.n_f;
            let mut zz = sst.shallow_clone();
            if grid.scorer == Scorer::R2 {
                let dy = &my_f - &my_t;
                c_v += outer(&(&m.m_f - &m.m_t), &dy) * m.n_f;
                zz = sst + dy.square() * m.n_f;
            }
            let proj = m.v.transpose(0, 1).matmul(&c_v);
            drop(c_v);
            // [A, r]: each alpha's shrinkage 1 / (s^2 + alpha) of each direction
            let shrink = (m.lambda.unsqueeze(0) + alphas_t.unsqueeze(1))
                .reciprocal()
                .to_kind(kind);
            let r = shrink.size()[1];
            // cross term of every alpha in one product: sum_k proj_k beta_k shrink_k
            let lin = shrink.matmul(&(&proj * &beta));
            // quadratic term, alphas in chunks of one [r, chunk x b] product each
            let chunk = (ALPHA_CHUNK_ELEMS / (r * len).max(1)).clamp(1, n_alphas);
            for a0 in (0..n_alphas).step_by(chunk as usize) {
                let na = chunk.min(n_alphas - a0);
                let sh = shrink.narrow(0, a0, na).transpose(0, 1).unsqueeze(2);
                // written into a [r, chunk, b] buffer so that it is one [r, chunk x b]
                // matrix without a copy (a broadcast product may come out permuted)
                let w = Tensor::empty([r, na, len], (kind, device));
                let _ = beta.unsqueeze(1).mul_out(&w, &sh);
                let w = w.view([r, na * len]);
                let quad = m.quad.apply(&w, kind).reshape([na, len]);
                let score = grid
                    .scorer
                    .score_stats(sst, &zz, &lin.narrow(0, a0, na), &quad);
                scores
                    .get(k as i64)
                    .narrow(0, a0, na)
                    .narrow(1, start, len)
                    .copy_(&score);
            }
        }
    }
    Ok(scores)
}

/// Mean over folds of [folds, alphas, v] scores: [alphas, v] in f64 (as himalaya).
pub fn mean_over_folds(scores: &Tensor) -> Tensor {
    scores.mean_dim(0, false, Kind::Double)
}

/// The alpha each voxel gets from mean scores [alphas, v] (higher is better): its own
/// best (`per_voxel`, himalaya's `local_alpha=True`) or the one alpha whose score,
/// averaged uniformly over all voxels, is best (sklearn `RidgeCV`'s multi-output
/// choice). Ties go to the larger alpha, as in himalaya; NaN scores never win.
pub fn select_alphas(mean_scores: &Tensor, alphas: &[f64], per_voxel: bool) -> Result<Vec<f64>> {
    check_alphas(alphas)?;
    let shape = mean_scores.size();
    if shape.len() != 2 || shape[0] != alphas.len() as i64 {
        return Err(RidgeError::ScoreShape {
            shape,
            alphas: alphas.len(),
        });
    }
    let v = shape[1] as usize;
    let flat = mean_scores
        .to_device(Device::Cpu)
        .to_kind(Kind::Double)
        .contiguous()
        .view([-1]);
    let s = Vec::<f64>::try_from(&flat).map_err(torch_err("copying scores to the host"))?;
    let best = |score: &dyn Fn(usize) -> f64| -> f64 {
        let mut best: Option<(f64, f64)> = None;
        for (a, &alpha) in alphas.iter().enumerate() {
            let sc = score(a);
            if sc.is_nan() {
                continue;
            }
            best = match best {
                Some((bs, ba)) if bs > sc || (bs == sc && ba >= alpha) => Some((bs, ba)),
                _ => Some((sc, alpha)),
            };
        }
        // all NaN: no evidence, so the strongest regularization
        best.map(|b| b.1)
            .unwrap_or_else(|| alphas.iter().copied().fold(f64::MIN, f64::max))
    };
    if per_voxel {
        Ok((0..v).map(|j| best(&|a| s[a * v + j])).collect())
    } else {
        let shared = best(&|a| s[a * v..(a + 1) * v].iter().sum::<f64>() / v as f64);
        Ok(vec![shared; v])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ridge::{ridge_cv, solve_ridge_svd, RidgeCvConfig};

    #[test]
    fn kfold_matches_sklearn_layout() {
        let f = kfold(11, 3, None).unwrap();
        assert_eq!(f[0].val, vec![0, 1, 2, 3]);
        assert_eq!(f[1].val, vec![4, 5, 6, 7]);
        assert_eq!(f[2].val, vec![8, 9, 10]);
        assert_eq!(f[1].train, vec![0, 1, 2, 3, 8, 9, 10]);
        let s = kfold(11, 3, Some(5)).unwrap();
        let mut all: Vec<i64> = s.iter().flat_map(|f| f.val.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..11).collect::<Vec<_>>());
        assert_eq!(s, kfold(11, 3, Some(5)).unwrap());
    }

    #[test]
    fn fewer_images_than_folds_names_both_numbers() {
        let e = kfold(3, 5, None).unwrap_err().to_string();
        assert!(e.contains('3') && e.contains('5'), "{e}");
        let x = Tensor::randn([4, 2], (Kind::Float, Device::Cpu));
        let y = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
        let e = ridge_cv(&x, &y, &RidgeCvConfig::default(), Device::Cpu).unwrap_err();
        assert!(matches!(e, RidgeError::TooFewRows { rows: 4, folds: 5 }));
        let msg = e.to_string();
        assert!(
            msg.contains("4 training images") && msg.contains("5 cross-validation folds"),
            "{msg}"
        );
    }

    /// The shortcut scores equal scoring explicit predictions of explicit fits.
    fn check_against_explicit(scorer: Scorer, n: i64, p: i64, kind: Kind) {
        tch::manual_seed(11);
        let x = Tensor::randn([n, p], (kind, Device::Cpu)) * 2.0 + 1.0;
        let w = Tensor::randn([p, 6], (kind, Device::Cpu));
        let y = x.matmul(&w) + Tensor::randn([n, 6], (kind, Device::Cpu)) * 3.0 + 4.0;
        let alphas = [0.1, 3.0, 100.0, 1e4];
        let folds = kfold(n as usize, 4, Some(1)).unwrap();
        let grid = CvGrid {
            folds: &folds,
            alphas: &alphas,
            scorer,
            voxel_batch: 4,
        };
        let got = cross_validate(&x, &y, &grid, Device::Cpu).unwrap();
        for (k, fold) in folds.iter().enumerate() {
            let tr = Tensor::from_slice(&fold.train);
            let va = Tensor::from_slice(&fold.val);
            let ws = solve_ridge_svd(
                &x.index_select(0, &tr),
                &y.index_select(0, &tr),
                &alphas,
                100,
                Device::Cpu,
            )
            .unwrap();
            for (a, wa) in ws.iter().enumerate() {
                let pred = wa.predict(&x.index_select(0, &va)).unwrap();
                let want = scorer.columns(&pred, &y.index_select(0, &va));
                let have = got.get(k as i64).get(a as i64).to_kind(Kind::Double);
                let tol = if kind == Kind::Double { 1e-9 } else { 2e-4 };
                assert!(
                    have.allclose(&want, tol, tol, false),
                    "{scorer:?} fold {k} alpha {}: {have} vs {want}",
                    alphas[a]
                );
            }
        }
    }

    #[test]
    fn fold_scores_equal_explicit_predictions() {
        for scorer in [Scorer::R2, Scorer::Pearson] {
            check_against_explicit(scorer, 80, 7, Kind::Double); // Gram quadratic form
            check_against_explicit(scorer, 40, 30, Kind::Double); // row form, rank-deficient folds
            check_against_explicit(scorer, 80, 7, Kind::Float);
        }
    }

    #[test]
    fn batching_does_not_change_scores() {
        tch::manual_seed(3);
        let x = Tensor::randn([50, 5], (Kind::Float, Device::Cpu));
        let y = Tensor::randn([50, 9], (Kind::Float, Device::Cpu));
        let folds = kfold(50, 5, None).unwrap();
        let alphas = [1.0, 10.0];
        let run = |b| {
            let grid = CvGrid {
                folds: &folds,
                alphas: &alphas,
                scorer: Scorer::R2,
                voxel_batch: b,
            };
            cross_validate(&x, &y, &grid, Device::Cpu).unwrap()
        };
        assert!(run(2).allclose(&run(100), 1e-6, 1e-6, false));
    }

    #[test]
    fn selection_prefers_larger_alpha_on_ties() {
        let scores = Tensor::from_slice(&[0.5f64, 0.1, 0.5, 0.2, 0.3, 0.2]).view([3, 2]);
        let alphas = [1.0, 10.0, 100.0];
        assert_eq!(
            select_alphas(&scores, &alphas, true).unwrap(),
            vec![10.0, 100.0]
        );
        // shared: alpha means 0.3, 0.35, 0.25
        assert_eq!(
            select_alphas(&scores, &alphas, false).unwrap(),
            vec![10.0, 10.0]
        );
        assert!(select_alphas(&scores, &alphas[..2], true).is_err());
    }
}
