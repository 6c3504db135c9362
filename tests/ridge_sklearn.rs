//! vcl's ridge, cross-validation and PCA against scikit-learn 1.9.1 on the same data.
//!
//! Python generates the data once (numpy seed 0, saved as float32 so that both sides
//! read identical numbers) and computes every reference in float64 with sklearn:
//! fixed-alpha `Ridge`, a per-voxel cross-validation reference built explicitly (sklearn's
//! `RidgeCV` with a splitter picks one alpha for all targets), `RidgeCV`'s shared alpha,
//! and `PCA(svd_solver='full')`. vcl computes in f32 (the default path).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};
use vcl_dataset::npy;
use vcl_tests::run_python;
use vcl_trainer::model::ridge::{
    self, fit_pca, fit_pca_with, matrix_to_tensor, predict, ridge_cv, solve_ridge_svd,
    tensor_to_matrix, tensor_to_vec, Device, PcaSolver, RidgeCvConfig, Scorer, Tensor,
};

const REFERENCE: &str = r#"
import json, sys
import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold

out = sys.argv[1]
rng = np.random.default_rng(0)
n, n_test, p, v = 300, 100, 40, 50
alphas = np.logspace(-1, 7, 9)

# features with unequal scales and non-zero means; per-voxel noise spanning 3.5
# orders of magnitude, so that voxels prefer alphas from 0.1 to 1e5
X = rng.standard_normal((n + n_test, p)) * np.logspace(0.5, -1, p) + rng.standard_normal(p)
W = rng.standard_normal((p, v))
Y = X @ W + rng.standard_normal((n + n_test, v)) * np.logspace(-1, 2.5, v) + 5 * rng.standard_normal(v)
X, Y = X.astype(np.float32), Y.astype(np.float32)
np.save(f"{out}/x.npy", X[:n]); np.save(f"{out}/y.npy", Y[:n]); np.save(f"{out}/x_test.npy", X[n:])
Xtr, Ytr, Xte = X[:n].astype(np.float64), Y[:n].astype(np.float64), X[n:].astype(np.float64)

# (a) fixed alphas
for a in (0.1, 10.0, 1000.0):
    np.save(f"{out}/pred_alpha_{a:g}.npy", Ridge(alpha=a).fit(Xtr, Ytr).predict(Xte))

# (b) per-voxel CV reference: every fold x alpha, scored per voxel, mean over folds
def pearson(y, p):
    yc, pc = y - y.mean(0), p - p.mean(0)
    den = np.sqrt((yc ** 2).sum(0) * (pc ** 2).sum(0))
    return np.where(den > 0, (yc * pc).sum(0) / np.where(den > 0, den, 1), 0.0)

folds = list(KFold(5).split(Xtr))
r2 = np.zeros((5, len(alphas), v)); pr = np.zeros((5, len(alphas), v))
for k, (tr, va) in enumerate(folds):
    for a, alpha in enumerate(alphas):
        P = Ridge(alpha=alpha).fit(Xtr[tr], Ytr[tr]).predict(Xtr[va])
        r2[k, a] = r2_score(Ytr[va], P, multioutput="raw_values")
        pr[k, a] = pearson(Ytr[va], P)
for name, s in (("r2", r2), ("pearson", pr)):
    mean = s.mean(0)
    best = mean.argmax(0)
    np.save(f"{out}/cv_{name}_mean.npy", mean)
    np.save(f"{out}/cv_{name}_best.npy", best.astype(np.int64))
    refit = np.zeros((n_test, v))
    for j in range(v):
        refit[:, j] = Ridge(alpha=alphas[best[j]]).fit(Xtr, Ytr[:, j]).predict(Xte)
    np.save(f"{out}/cv_{name}_refit.npy", refit)

# (c) RidgeCV's one alpha for all targets, and what it is on the reference scores
rcv = RidgeCV(alphas=alphas, cv=KFold(5), scoring="r2").fit(Xtr, Ytr)
uniform = int(r2.mean(0).mean(1).argmax())
by_fold = int(np.array([[r2_score(Ytr[va], Ridge(alpha=al).fit(Xtr[tr], Ytr[tr]).predict(Xtr[va]))
                         for al in alphas] for tr, va in folds]).mean(0).argmax())
weighted = int(np.array([[r2_score(Ytr[va], Ridge(alpha=al).fit(Xtr[tr], Ytr[tr]).predict(Xtr[va]),
                                   multioutput="variance_weighted")
                          for al in alphas] for tr, va in folds]).mean(0).argmax())
np.save(f"{out}/ridgecv_pred.npy", rcv.predict(Xte))
json.dump({"ridgecv_alpha": float(rcv.alpha_), "uniform_mean_argmax": uniform,
           "r2_score_default_argmax": by_fold, "variance_weighted_argmax": weighted},
          open(f"{out}/shared.json", "w"))

# (d) PCA: a tall case with every component kept, and a wide one (d >> n)
def pca_case(name, Xp, k, Xnew):
    np.save(f"{out}/pca_{name}_x.npy", Xp); np.save(f"{out}/pca_{name}_new.npy", Xnew)
    m = PCA(n_components=k, svd_solver="full").fit(Xp.astype(np.float64))
    np.save(f"{out}/pca_{name}_components.npy", m.components_)
    np.save(f"{out}/pca_{name}_variance.npy", m.explained_variance_[None, :])
    np.save(f"{out}/pca_{name}_transform.npy", m.transform(Xnew.astype(np.float64)))

tall = (rng.standard_normal((120, 30)) * np.logspace(1, -1, 30) + 3).astype(np.float32)
pca_case("tall", tall[:100], 30, tall[100:])
# rank-40 structure with distinct scales plus a little noise; the first 20 components
# are well separated, the noise bulk is not and is not compared
F = rng.standard_normal((230, 40)) * np.logspace(1, -0.5, 40)
wide = (F @ rng.standard_normal((40, 90000)) / 30 + 0.01 * rng.standard_normal((230, 90000)) + 1).astype(np.float32)
pca_case("wide", wide[:200], 20, wide[200:])
"#;

const ALPHAS: [f64; 9] = [1e-1, 1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7];

/// The directory holding the data and sklearn's answers (computed once per process).
fn reference() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run_python(REFERENCE, &[&path]);
        (dir, path)
    })
    .1
}

fn read(name: &str) -> Array2<f32> {
    npy::read_f32_2d(&reference().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn tensor(name: &str) -> Tensor {
    matrix_to_tensor(read(name).view())
}

fn device() -> Device {
    Device::cuda_if_available()
}

/// Largest |a - b| in each column relative to that column's largest |b|.
fn column_rel_err(a: ArrayView2<f64>, b: ArrayView2<f64>) -> f64 {
    assert_eq!(a.dim(), b.dim());
    a.axis_iter(Axis(1))
        .zip(b.axis_iter(Axis(1)))
        .map(|(ca, cb)| {
            let scale = cb.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-12);
            ca.iter()
                .zip(cb)
                .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
                / scale
        })
        .fold(0.0, f64::max)
}

fn as_f64(a: &Array2<f32>) -> Array2<f64> {
    a.mapv(f64::from)
}

fn labels(name: &str) -> Vec<usize> {
    npy::read_labels(&reference().join(name))
        .unwrap()
        .iter()
        .map(|&i| i as usize)
        .collect()
}

#[test]
fn fixed_alpha_predictions_equal_sklearn_ridge() {
    let (x, y, x_test) = (tensor("x.npy"), tensor("y.npy"), tensor("x_test.npy"));
    let alphas = [0.1, 10.0, 1000.0];
    let fits = solve_ridge_svd(&x, &y, &alphas, 16, device()).unwrap();
    for (w, alpha) in fits.iter().zip(alphas) {
        let ours = tensor_to_matrix(&w.predict(&x_test).unwrap()).unwrap();
        let theirs = as_f64(&read(&format!("pred_alpha_{alpha}.npy")));
        let err = column_rel_err(ours.view(), theirs.view());
        eprintln!("alpha {alpha}: max relative prediction difference {err:.2e}");
        assert!(
            err < 1e-4,
            "alpha {alpha}: predictions differ by {err:.2e} (relative)"
        );
    }
}

/// Per-voxel CV against the explicit sklearn reference, for both scorers.
fn per_voxel_cv_matches(scorer: Scorer, name: &str) {
    let (x, y, x_test) = (tensor("x.npy"), tensor("y.npy"), tensor("x_test.npy"));
    let cfg = RidgeCvConfig {
        scorer,
        voxel_batch: 16,
        ..RidgeCvConfig::default()
    };
    assert_eq!(cfg.alphas.len(), ALPHAS.len());
    let fit = ridge_cv(&x, &y, &cfg, device()).unwrap();

    // the mean fold scores themselves
    let ours = tensor_to_matrix(&fit.cv_scores).unwrap();
    let theirs = as_f64(&read(&format!("cv_{name}_mean.npy")));
    let score_err = (&ours - &theirs).iter().fold(0f64, |m, d| m.max(d.abs()));
    eprintln!("{name}: max |mean CV score difference| {score_err:.2e}");
    assert!(
        score_err < 1e-4,
        "{name}: CV scores differ by {score_err:.2e}"
    );

    // chosen alphas
    let best = labels(&format!("cv_{name}_best.npy"));
    let same: Vec<bool> = best
        .iter()
        .zip(&fit.alphas)
        .map(|(&b, &a)| (ALPHAS[b] / a - 1.0).abs() < 1e-9)
        .collect();
    let agree = same.iter().filter(|&&s| s).count() as f64 / same.len() as f64;
    let distinct: std::collections::BTreeSet<usize> = best.iter().copied().collect();
    eprintln!(
        "{name}: chosen alpha agrees on {:.1}% of {} voxels; sklearn's choices use {} distinct alphas",
        100.0 * agree,
        same.len(),
        distinct.len()
    );
    assert!(
        distinct.len() >= 4,
        "the data should make voxels prefer different alphas"
    );
    assert!(
        agree >= 0.98,
        "{name}: alphas agree on only {:.1}%",
        100.0 * agree
    );

    // refit predictions, on voxels where the alphas agree
    let pred = tensor_to_matrix(&predict(&fit, &x_test).unwrap()).unwrap();
    let refit = as_f64(&read(&format!("cv_{name}_refit.npy")));
    for (j, _) in same.iter().enumerate().filter(|(_, &s)| s) {
        let err = column_rel_err(
            pred.column(j).insert_axis(Axis(1)),
            refit.column(j).insert_axis(Axis(1)),
        );
        assert!(
            err < 1e-4,
            "{name}: voxel {j} refit predictions differ by {err:.2e}"
        );
    }
}

#[test]
fn per_voxel_alphas_equal_an_explicit_sklearn_reference_r2() {
    per_voxel_cv_matches(Scorer::R2, "r2");
}

#[test]
fn per_voxel_alphas_equal_an_explicit_sklearn_reference_pearson() {
    per_voxel_cv_matches(Scorer::Pearson, "pearson");
}

/// sklearn's RidgeCV with a splitter scores each (fold, alpha) with r2_score's default
/// multioutput='uniform_average' (the plain mean of the voxels' R^2) and averages the
/// folds; the Python side shows that by recomputing that choice two ways. Our shared
/// alpha is the best mean over voxels of the per-voxel mean fold scores: the same number.
/// (On this data a variance-weighted mean would pick a larger alpha, so the check can
/// tell the two apart.)
#[test]
fn shared_alpha_equals_sklearn_ridgecv() {
    let (x, y, x_test) = (tensor("x.npy"), tensor("y.npy"), tensor("x_test.npy"));
    let shared: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference().join("shared.json")).unwrap())
            .unwrap();
    let sk_alpha = shared["ridgecv_alpha"].as_f64().unwrap();
    let uniform = shared["uniform_mean_argmax"].as_u64().unwrap() as usize;
    let default_avg = shared["r2_score_default_argmax"].as_u64().unwrap() as usize;
    let weighted = shared["variance_weighted_argmax"].as_u64().unwrap() as usize;
    eprintln!(
        "RidgeCV alpha_ {sk_alpha}; argmax of uniform voxel mean {}; of r2_score default {}; \
         of a variance-weighted mean {} (what RidgeCV does not do)",
        ALPHAS[uniform], ALPHAS[default_avg], ALPHAS[weighted]
    );
    assert_eq!(
        ALPHAS[uniform], sk_alpha,
        "RidgeCV averages R^2 uniformly over targets"
    );
    assert_eq!(ALPHAS[default_avg], sk_alpha);

    let cfg = RidgeCvConfig {
        per_voxel: false,
        ..RidgeCvConfig::default()
    };
    let fit = ridge_cv(&x, &y, &cfg, device()).unwrap();
    assert!(fit.alphas.iter().all(|&a| a == fit.alphas[0]));
    assert!(
        (fit.alphas[0] / sk_alpha - 1.0).abs() < 1e-9,
        "ours {} vs sklearn {sk_alpha}",
        fit.alphas[0]
    );
    let ours = tensor_to_matrix(&predict(&fit, &x_test).unwrap()).unwrap();
    let err = column_rel_err(ours.view(), as_f64(&read("ridgecv_pred.npy")).view());
    assert!(
        err < 1e-4,
        "shared-alpha refit predictions differ by {err:.2e}"
    );
}

/// Components equal sklearn's up to sign (and, with the svd_flip convention, in sign
/// too); projections of new rows agree within 1e-4 of each component's scale.
fn pca_matches(name: &str, k: usize, solver: PcaSolver) {
    let x = tensor(&format!("pca_{name}_x.npy"));
    let pca = if solver == PcaSolver::Auto {
        fit_pca(&x, k, device()).unwrap()
    } else {
        fit_pca_with(&x, k, solver, device()).unwrap()
    };
    assert_eq!(pca.n_components(), k);
    let ours = tensor_to_matrix(&pca.components).unwrap(); // [d, k]
    let theirs = as_f64(&read(&format!("pca_{name}_components.npy"))); // [k, d]
    let mut flips = 0;
    for c in 0..k {
        let (a, b): (ArrayView1<f64>, ArrayView1<f64>) = (ours.column(c), theirs.row(c));
        let sign = if a.dot(&b) < 0.0 { -1.0 } else { 1.0 };
        flips += usize::from(sign < 0.0);
        let err = a
            .iter()
            .zip(&b)
            .fold(0f64, |m, (x, y)| m.max((sign * x - y).abs()));
        assert!(
            err < 1e-4,
            "{name} ({solver:?}): component {c} differs by {err:.2e}"
        );
    }
    assert_eq!(
        flips, 0,
        "{name} ({solver:?}): sign convention differs from svd_flip"
    );
    let var = tensor_to_vec(&pca.explained_variance).unwrap();
    let var_ref = read(&format!("pca_{name}_variance.npy"));
    for (c, (a, b)) in var.iter().zip(var_ref.row(0)).enumerate() {
        assert!(
            (a / f64::from(*b) - 1.0).abs() < 1e-5,
            "{name}: variance {c}: {a} vs {b}"
        );
    }
    let new = tensor(&format!("pca_{name}_new.npy"));
    let proj = tensor_to_matrix(&pca.transform(&new).unwrap()).unwrap();
    let err = column_rel_err(
        proj.view(),
        as_f64(&read(&format!("pca_{name}_transform.npy"))).view(),
    );
    eprintln!("PCA {name} ({solver:?}): transform differs by {err:.2e} (relative per component)");
    assert!(
        err < 1e-4,
        "{name} ({solver:?}): transform differs by {err:.2e}"
    );
}

#[test]
fn pca_equals_sklearn_full_svd() {
    // k = 1000 requested: clipped to min(1000, n - 1, d) = 30
    pca_matches("tall", 30, PcaSolver::Auto);
    let x = tensor("pca_tall_x.npy");
    assert_eq!(
        fit_pca(&x, ridge::DEFAULT_COMPONENTS, device())
            .unwrap()
            .n_components(),
        30
    );
    pca_matches("tall", 30, PcaSolver::FeatureGram);
    pca_matches("tall", 30, PcaSolver::RowGram);
}

#[test]
fn pca_equals_sklearn_when_features_outnumber_images() {
    // 200 x 90000: Auto goes through the 200 x 200 Gram matrix
    pca_matches("wide", 20, PcaSolver::Auto);
    pca_matches("wide", 20, PcaSolver::Svd);
    let x = tensor("pca_wide_x.npy");
    assert_eq!(
        fit_pca(&x, ridge::DEFAULT_COMPONENTS, device())
            .unwrap()
            .n_components(),
        199
    );
}
