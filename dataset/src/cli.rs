//! The data commands, defined once for `vcl` (which flattens them into its own) and
//! the torch-free `vcl-data`.

use anyhow::{Context, Result};

use crate::algonauts::summary::{self, InspectConfig};
use crate::synth::{self, SynthConfig};

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Synthesize an in-silico brain in the Algonauts 2023 layout.
    Synth(SynthConfig),
    /// Summarize a dataset folder: subjects, images, vertices per ROI, noise ceilings.
    Inspect(InspectConfig),
}

impl DataCommand {
    pub fn run(&self) -> Result<()> {
        match self {
            DataCommand::Synth(cfg) => {
                let summary = synth::synthesize(cfg).with_context(|| {
                    format!(
                        "synthesizing the in-silico brain into {}",
                        cfg.out.display()
                    )
                })?;
                print!("{summary}");
            }
            DataCommand::Inspect(cfg) => {
                let text = summary::inspect(cfg)
                    .with_context(|| format!("inspecting {}", cfg.data_dir.display()))?;
                print!("{text}");
            }
        }
        Ok(())
    }
}
