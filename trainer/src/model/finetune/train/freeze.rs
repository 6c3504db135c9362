//! Which variables train: `--freeze` specs (prefixes and index ranges) and the list
//! Adam updates.

use std::collections::BTreeMap;

use tch::nn;
use tch::Tensor;

use crate::features::backbones::Backbone;
use crate::model::finetune::FinetuneError;

/// Every variable Adam updates, by checkpoint name: the backbone's (not frozen) and
/// the heads'. Batch-norm running statistics are buffers, not trained.
pub(super) fn trained_variables(
    backbone: &Backbone,
    heads: &nn::VarStore,
) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in backbone.var_store().variables() {
        if t.requires_grad() {
            out.push((format!("backbone.{name}"), t));
        }
    }
    for (name, t) in heads.variables() {
        if t.requires_grad() {
            out.push((format!("heads.{name}"), t));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Parses one `--freeze` spec into the variable-name prefixes it covers:
/// `features.0` -> [`features.0`]; `features.0..features.3` (or `features.0..3`) ->
/// `features.0` ... `features.3`, inclusive.
fn freeze_prefixes(spec: &str) -> Result<Vec<String>, FinetuneError> {
    let spec = spec.trim();
    let Some((lo, hi)) = spec.split_once("..") else {
        return Ok(vec![spec.to_string()]);
    };
    let bad = || {
        FinetuneError::Config(format!(
            "freeze: '{spec}' is not a range like features.0..features.3"
        ))
    };
    let (base, lo_i) = lo.rsplit_once('.').ok_or_else(bad)?;
    let lo_i: usize = lo_i.parse().map_err(|_| bad())?;
    let hi_i: usize = match hi.rsplit_once('.') {
        Some((hb, hi_i)) if hb == base => hi_i.parse().map_err(|_| bad())?,
        Some(_) => return Err(bad()),
        None => hi.parse().map_err(|_| bad())?,
    };
    if hi_i < lo_i {
        return Err(bad());
    }
    Ok((lo_i..=hi_i).map(|i| format!("{base}.{i}")).collect())
}

/// Stops gradients of the backbone variables named by `specs`; returns their names.
/// A spec that names no variable is an error (a typo would otherwise train everything).
pub(super) fn freeze(backbone: &Backbone, specs: &[String]) -> Result<Vec<String>, FinetuneError> {
    let vars: BTreeMap<String, Tensor> = backbone.var_store().variables().into_iter().collect();
    let mut frozen = Vec::new();
    for spec in specs {
        let prefixes = freeze_prefixes(spec)?;
        let mut hit = false;
        for (name, t) in &vars {
            if prefixes
                .iter()
                .any(|p| name == p || name.starts_with(&format!("{p}.")))
            {
                hit = true;
                if t.requires_grad() {
                    let _ = t.set_requires_grad(false);
                    frozen.push(name.clone());
                }
            }
        }
        if !hit {
            return Err(FinetuneError::Config(format!(
                "freeze: '{spec}' matches no variable of {} (names look like features.0.0.weight)",
                backbone.arch()
            )));
        }
    }
    Ok(frozen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_specs_expand() {
        assert_eq!(freeze_prefixes("features.0").unwrap(), vec!["features.0"]);
        assert_eq!(
            freeze_prefixes("features.1..features.3").unwrap(),
            vec!["features.1", "features.2", "features.3"]
        );
        assert_eq!(freeze_prefixes("features.2..3").unwrap().len(), 2);
        assert!(freeze_prefixes("features.3..features.1").is_err());
        assert!(freeze_prefixes("features.1..layer.2").is_err());
    }
}
