//! `vcl-data`: the data commands of `vcl` (synth, inspect) without libtorch, for a
//! machine that only makes or checks datasets; the same flags, from the same types.

use clap::Parser;
use vcl_dataset::cli::DataCommand;

#[derive(Parser, Debug)]
#[command(
    name = "vcl-data",
    version,
    about = "Make (synth) or summarize (inspect) datasets in the Algonauts 2023 layout"
)]
struct Cli {
    #[command(subcommand)]
    command: DataCommand,
}

fn main() -> anyhow::Result<()> {
    vcl_dataset::logging::init();
    Cli::parse().command.run()
}
