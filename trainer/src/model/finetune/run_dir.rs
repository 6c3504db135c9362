//! The run directory's small files: config, provenance, history and step CSVs, curves,
//! summary.
//! Each is rewritten whole (via a temporary file and a rename) so that a killed run
//! never leaves half a file.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::train::StepRecord;
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

const STEPS_HEADER: &str = "epoch,batch,subject,images,loss";

/// steps.csv: every optimizer step's training loss (full precision), epoch by epoch.
pub(crate) fn write_steps(run: &Path, steps: &[StepRecord]) -> Result<(), FinetuneError> {
    let mut s = format!("{STEPS_HEADER}\n");
    for r in steps {
        let _ = writeln!(
            s,
            "{},{},{},{},{}",
            r.epoch, r.batch, r.subject, r.images, r.loss
        );
    }
    write_atomic(&run.join("steps.csv"), s.as_bytes())
}

/// The steps of epochs 1..=`through` from a resumed run's steps.csv (none when the
/// file is missing: runs from before it existed resume without their old steps).
pub(crate) fn read_steps(run: &Path, through: usize) -> Result<Vec<StepRecord>, FinetuneError> {
    let path = run.join("steps.csv");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FinetuneError::io(&path, e)),
    };
    let bad = |line: usize, why: &str| FinetuneError::Resume {
        run: run.to_path_buf(),
        reason: format!("{} line {line}: {why}", path.display()),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 5 {
            return Err(bad(i + 1, "expected 5 fields"));
        }
        let int = |k: usize| {
            f[k].parse::<usize>()
                .map_err(|_| bad(i + 1, "not an integer"))
        };
        let r = StepRecord {
            epoch: int(0)?,
            batch: int(1)?,
            subject: int(2)?,
            images: int(3)?,
            loss: f[4]
                .parse()
                .map_err(|_| bad(i + 1, "loss is not a number"))?,
        };
        if r.epoch <= through {
            out.push(r);
        }
    }
    Ok(out)
}
