//! `vcl synth`, `vcl inspect`: the data layer's commands (also in the torch-free
//! `vcl-data` binary, with the same configuration types).

use anyhow::{Context, Result};
use vcl_dataset::algonauts::summary::{self, InspectConfig};
use vcl_dataset::synth::{self, SynthConfig};

pub fn synth(cfg: &SynthConfig) -> Result<()> {
    let summary = synth::synthesize(cfg).with_context(|| {
        format!(
            "synthesizing the in-silico brain into {}",
            cfg.out.display()
        )
    })?;
    tracing::info!(?summary, "in-silico dataset written");
    Ok(())
}

pub fn inspect(cfg: &InspectConfig) -> Result<()> {
    let text =
        summary::inspect(cfg).with_context(|| format!("inspecting {}", cfg.data_dir.display()))?;
    print!("{text}");
    Ok(())
}
