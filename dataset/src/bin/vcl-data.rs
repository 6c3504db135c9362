//! `vcl-data`: the data commands of `vcl` (synth, inspect) without libtorch, for a
//! machine that only makes or checks datasets. Same flags as `vcl synth` / `vcl inspect`:
//! both binaries parse the same configuration types.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use vcl_dataset::algonauts::summary::{self, InspectConfig};
use vcl_dataset::synth::{self, SynthConfig};

#[derive(Parser, Debug)]
#[command(
    name = "vcl-data",
    version,
    about = "Make (synth) or summarize (inspect) datasets in the Algonauts 2023 layout"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Synthesize an in-silico brain in the Algonauts 2023 layout.
    Synth(SynthConfig),
    /// Summarize a dataset folder: subjects, images, vertices per ROI, noise ceilings.
    Inspect(InspectConfig),
}

fn main() -> Result<()> {
    vcl_dataset::logging::init();
    match Cli::parse().command {
        Command::Synth(cfg) => {
            let summary = synth::synthesize(&cfg).with_context(|| {
                format!(
                    "synthesizing the in-silico brain into {}",
                    cfg.out.display()
                )
            })?;
            print!("{summary}");
        }
        Command::Inspect(cfg) => {
            let text = summary::inspect(&cfg)
                .with_context(|| format!("inspecting {}", cfg.data_dir.display()))?;
            print!("{text}");
        }
    }
    Ok(())
}
