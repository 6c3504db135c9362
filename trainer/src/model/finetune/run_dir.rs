//! The run directory's small files: config, provenance, history CSV, curves, summary.
//! Each is rewritten whole (via a temporary file and a rename) so that a killed run
//! never leaves half a file.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::{EpochRecord, FinetuneError};
use crate::report::plots;

/// Writes `bytes` to `path` through `path.partial` and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FinetuneError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    let tmp = path.with_file_name(name);
    std::fs::write(&tmp, bytes).map_err(|e| FinetuneError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| FinetuneError::io(path, e))
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), FinetuneError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| FinetuneError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(path, text.as_bytes())
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

pub(crate) fn history_csv(history: &[EpochRecord]) -> String {
    let mut s = String::from("epoch,train_loss,val_loss,val_mi_bound,images_per_s,seconds,tau\n");
    for r in history {
        let _ = writeln!(
            s,
            "{},{:.6},{},{},{:.2},{:.2},{}",
            r.epoch,
            r.train_loss,
            opt(r.val_loss),
            opt(r.val_mi_bound),
            r.images_per_s,
            r.seconds,
            opt(r.tau)
        );
    }
    s
}

/// history.csv, loss.png and (when there is an MI bound) mi.png.
pub(crate) fn write_history(run: &Path, history: &[EpochRecord]) -> Result<(), FinetuneError> {
    write_atomic(&run.join("history.csv"), history_csv(history).as_bytes())?;
    let series = |f: &dyn Fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|r| f(r).map(|v| (r.epoch as f64, v)))
            .collect()
    };
    let mut loss = vec![("train".to_string(), series(&|r| Some(r.train_loss)))];
    let val = series(&|r| r.val_loss);
    if !val.is_empty() {
        loss.push(("validation".to_string(), val));
    }
    plots::line_chart(
        &run.join("loss.png"),
        "fine-tuning loss",
        ("epoch", "loss"),
        &loss,
    )?;
    let mi = series(&|r| r.val_mi_bound);
    if !mi.is_empty() {
        plots::line_chart(
            &run.join("mi.png"),
            "MI lower bound, validation images",
            ("epoch", "nats"),
            &[("validation".to_string(), mi)],
        )?;
    }
    Ok(())
}
