//! Wall time and peak resident memory of each stage of a command (decode, features,
//! PCA, ridge, evaluation): what `vcl fit` and `vcl evaluate` print and record, and
//! what `scripts/bench_scale.sh` tabulates.
//!
//! The peak is the kernel's high-water mark of the resident set (`VmHWM`), reset at the
//! start of each stage through `/proc/self/clear_refs` (Linux 4.0 and later), so that
//! each stage reports its own peak rather than the largest one before it. Where the
//! reset is refused the figure is the peak since the process began, and the record
//! says so.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One stage's totals over every call (a stage runs once per subject, tap or
/// hemisphere).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
    pub calls: usize,
    /// Largest resident set while the stage ran, MB (None off Linux).
    pub peak_rss_mb: Option<f64>,
    /// Whether the peak is this stage's own (the reset worked) or the process's.
    pub peak_is_per_stage: bool,
}

/// The stages of one command, in the order they first ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stages {
    pub stages: Vec<StageTime>,
}

impl Stages {
    /// Runs `f` as (part of) `stage`. Stages must not nest: the inner one's reset of
    /// the high-water mark would hide the outer one's peak.
    pub fn time<T, E>(&mut self, stage: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let per_stage = reset_peak();
        let start = Instant::now();
        let out = f();
        let seconds = start.elapsed().as_secs_f64();
        let peak = peak_rss_mb();
        match self.stages.iter_mut().find(|s| s.stage == stage) {
            Some(s) => {
                s.seconds += seconds;
                s.calls += 1;
                s.peak_rss_mb = max_opt(s.peak_rss_mb, peak);
                s.peak_is_per_stage &= per_stage;
            }
            None => self.stages.push(StageTime {
                stage: stage.to_string(),
                seconds,
                calls: 1,
                peak_rss_mb: peak,
                peak_is_per_stage: per_stage,
            }),
        }
        out
    }

    /// The largest peak of any stage: the command's peak, as far as its stages cover it.
    pub fn peak_rss_mb(&self) -> Option<f64> {
        self.stages
            .iter()
            .fold(None, |acc, s| max_opt(acc, s.peak_rss_mb))
    }

    pub fn total_seconds(&self) -> f64 {
        self.stages.iter().map(|s| s.seconds).sum()
    }

    /// A Markdown table, one row per stage and a total.
    pub fn markdown(&self) -> String {
        let mb = |v: Option<f64>| v.map_or("-".to_string(), |m| format!("{m:.0}"));
        let mut out =
            String::from("| stage | calls | seconds | peak RSS (MB) |\n|---|---:|---:|---:|\n");
        for s in &self.stages {
            out.push_str(&format!(
                "| {} | {} | {:.1} | {} |\n",
                s.stage,
                s.calls,
                s.seconds,
                mb(s.peak_rss_mb)
            ));
        }
        out.push_str(&format!(
            "| total | | {:.1} | {} |\n",
            self.total_seconds(),
            mb(self.peak_rss_mb())
        ));
        out
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Resets the resident-set high-water mark to the current resident set; false where
/// the kernel refuses.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `VmHWM` of this process in MB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_add_up_and_see_their_own_peak() {
        let mut st = Stages::default();
        // 256 MB touched inside the first stage only.
        let big = st
            .time("alloc", || Ok::<_, ()>(vec![1u8; 256 << 20]))
            .unwrap();
        drop(big);
        st.time("small", || Ok::<_, ()>(())).unwrap();
        st.time("small", || Ok::<_, ()>(())).unwrap();
        let e = st.time("small", || Err::<(), _>("boom"));
        assert_eq!(e, Err("boom"));
        assert_eq!(st.stages.len(), 2);
        assert_eq!(st.stages[1].calls, 3);
        let alloc = st.stages[0].peak_rss_mb.expect("Linux has VmHWM");
        let small = st.stages[1].peak_rss_mb.unwrap();
        assert!(
            alloc >= small + 200.0 || !st.stages[1].peak_is_per_stage,
            "{alloc} vs {small}"
        );
        assert_eq!(st.peak_rss_mb(), Some(alloc.max(small)));
        let md = st.markdown();
        assert!(
            md.contains("| alloc | 1 |") && md.contains("| small | 3 |"),
            "{md}"
        );
    }
}
