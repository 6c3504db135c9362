//! Per-voxel scores of predictions, and the scorers cross-validation can use.

use tch::{Kind, Tensor};

/// What a cross-validation fold scores for each (alpha, voxel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scorer {
    /// Coefficient of determination, 1 - SSE / SST with the validation rows' own mean
    /// (sklearn's and himalaya's `r2_score`); 0 for a constant validation column.
    #[default]
    R2,
    /// Pearson correlation of prediction and target; 0 when either is constant.
    Pearson,
}

impl Scorer {
    /// Scores one voxel batch from sufficient statistics (all [b]): `sst`, the
    /// validation targets' centered sum of squares; `lin`, the cross term; `quad`, the
    /// prediction's sum of squares; `zz`, the sum of squares of the targets about the
    /// prediction's offset (R^2 only). For R^2, SSE = zz - 2 lin + quad; for Pearson,
    /// lin and quad are centered and r = lin / sqrt(quad * sst).
    pub(crate) fn score_stats(
        self,
        sst: &Tensor,
        zz: &Tensor,
        lin: &Tensor,
        quad: &Tensor,
    ) -> Tensor {
        match self {
            Scorer::R2 => {
                let sse = zz - lin * 2.0 + quad;
                let r2 = -(sse / sst) + 1.0;
                // constant validation column: no variance to explain
                r2.where_self(&sst.gt(0.0), &r2.zeros_like())
            }
            Scorer::Pearson => {
                let denom = (quad.clamp_min(0.0) * sst).sqrt();
                let r = lin / &denom;
                r.where_self(&denom.gt(0.0), &r.zeros_like())
            }
        }
    }

    /// The score of each column of `pred` [n, v] against `y` [n, v]: [v].
    pub fn columns(self, pred: &Tensor, y: &Tensor) -> Tensor {
        match self {
            Scorer::R2 => r2_columns(pred, y),
            Scorer::Pearson => pearson_columns(pred, y),
        }
    }
}

/// Pearson r of each column of `pred` [n, v] with the same column of `y` [n, v]: [v],
/// computed in f64. A constant column (in either) scores 0, not NaN: a voxel the model
/// cannot predict at all is as bad as an uncorrelated one.
pub fn pearson_columns(pred: &Tensor, y: &Tensor) -> Tensor {
    let p = pred.to_kind(Kind::Double);
    let t = y.to_kind(Kind::Double);
    let p = &p - p.mean_dim(0, true, Kind::Double);
    let t = &t - t.mean_dim(0, true, Kind::Double);
    let cov = (&p * &t).sum_dim_intlist(0, false, Kind::Double);
    let denom = (p.square().sum_dim_intlist(0, false, Kind::Double)
        * t.square().sum_dim_intlist(0, false, Kind::Double))
    .sqrt();
    let r = cov / &denom;
    r.where_self(&denom.gt(0.0), &r.zeros_like())
}

/// R^2 of each column: 1 - sum (y - pred)^2 / sum (y - mean y)^2 ([v], f64), as
/// sklearn's `r2_score(multioutput='raw_values')`; a constant `y` column scores 0.
pub fn r2_columns(pred: &Tensor, y: &Tensor) -> Tensor {
    let p = pred.to_kind(Kind::Double);
    let t = y.to_kind(Kind::Double);
    let sse = (&t - &p).square().sum_dim_intlist(0, false, Kind::Double);
    let sst = (&t - t.mean_dim(0, true, Kind::Double))
        .square()
        .sum_dim_intlist(0, false, Kind::Double);
    let r2 = -(sse / &sst) + 1.0;
    r2.where_self(&sst.gt(0.0), &r2.zeros_like())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(rows: &[[f64; 2]]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, 2])
    }

    #[test]
    fn pearson_of_constant_column_is_zero() {
        let pred = t(&[[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]]);
        let y = t(&[[2.0, 1.0], [4.0, 2.0], [6.5, 0.0]]);
        let r = Vec::<f64>::try_from(pearson_columns(&pred, &y)).unwrap();
        assert!(r[0] > 0.99 && r[0] <= 1.0);
        assert_eq!(r[1], 0.0);
        // constant target too
        let r = Vec::<f64>::try_from(pearson_columns(&y, &pred)).unwrap();
        assert_eq!(r[1], 0.0);
    }

    #[test]
    fn r2_matches_definition() {
        let y = Tensor::randn([50, 3], (Kind::Double, Device::Cpu));
        let r2 = Vec::<f64>::try_from(r2_columns(&y, &y)).unwrap();
        assert!(r2.iter().all(|v| (v - 1.0).abs() < 1e-12));
        let mean = y.mean_dim(0, true, Kind::Double).expand([50, 3], false);
        let r2 = Vec::<f64>::try_from(r2_columns(&mean, &y)).unwrap();
        assert!(r2.iter().all(|v| v.abs() < 1e-12));
    }

    #[test]
    fn stats_agree_with_columns() {
        // the sufficient-statistics route cross-validation uses gives the same scores
        let y = Tensor::randn([40, 4], (Kind::Double, Device::Cpu));
        let pred = &y * 0.5 + Tensor::randn([40, 4], (Kind::Double, Device::Cpu));
        let yc = &y - y.mean_dim(0, true, Kind::Double);
        let sst = yc.square().sum_dim_intlist(0, false, Kind::Double);
        let zz = y.square().sum_dim_intlist(0, false, Kind::Double);
        let lin = (&y * &pred).sum_dim_intlist(0, false, Kind::Double);
        let quad = pred.square().sum_dim_intlist(0, false, Kind::Double);
        let a = Scorer::R2.score_stats(&sst, &zz, &lin, &quad);
        assert!(a.allclose(&r2_columns(&pred, &y), 1e-10, 1e-10, false));
        let pc = &pred - pred.mean_dim(0, true, Kind::Double);
        let lin = (&yc * &pc).sum_dim_intlist(0, false, Kind::Double);
        let quad = pc.square().sum_dim_intlist(0, false, Kind::Double);
        let b = Scorer::Pearson.score_stats(&sst, &zz, &lin, &quad);
        assert!(b.allclose(&pearson_columns(&pred, &y), 1e-10, 1e-10, false));
    }
}
