//! The analyses of what tuned networks learned (`lateralization`, `mi`, `probe`,
//! `landscape`) and the `report` that gathers a folder of runs.

use anyhow::{Context, Result};
use vcl_dataset::paths;
use vcl_trainer::analysis::probe::{faces, photo_sources};
use vcl_trainer::analysis::{
    self, backbones, LandscapeConfig, LateralizationConfig, MiConfig, ProbeConfig,
};
use vcl_trainer::report::ReportConfig;

use crate::device;

/// Prints a table an analysis just wrote.
fn print_table(path: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the table just written, {}", path.display()))?;
    print!("{text}");
    Ok(())
}

pub fn lateralization(c: &LateralizationConfig) -> Result<()> {
    analysis::lateralization(c, device()?)
        .with_context(|| format!("lateralization of {}", c.run.display()))?;
    let md = c.out.join("lateralization.md");
    print_table(&md)?;
    println!("\nreport: {}", md.display());
    Ok(())
}

pub fn mi(c: &MiConfig) -> Result<()> {
    analysis::mi(c, &paths::cache_dir(), device()?).context("the MI lower bound")?;
    print_table(&c.out.join("mi.md"))
}

pub fn probe(c: &ProbeConfig) -> Result<()> {
    let (models, size) =
        backbones::compared(&c.runs, c.input_size).context("the backbones to probe")?;
    let sets = vec![
        faces(&paths::lfw_subset(), size)
            .context("the faces set (scripts/setup.sh installs it)")?,
        photo_sources(&paths::photos_dir(), c.crops_per_photo, size, 0)
            .context("the photo-source set")?,
    ];
    analysis::probe(&models, &sets, c, device()?).context("probing")?;
    print_table(&c.out.join("probe.md"))
}

pub fn landscape(c: &LandscapeConfig) -> Result<()> {
    let (models, size) =
        backbones::compared(&c.runs, c.input_size).context("the backbones to compare")?;
    let set = photo_sources(&paths::photos_dir(), c.crops_per_photo, size, 1)
        .context("the probe images")?;
    analysis::landscape(&models, &set, &c.out, device()?).context("the model landscape")?;
    print_table(&c.out.join("landscape.md"))
}

pub fn report(c: &ReportConfig) -> Result<()> {
    let out = c.out.clone().unwrap_or_else(|| c.runs.join("report"));
    let r = vcl_trainer::report::report(&c.runs, &out)
        .with_context(|| format!("reporting {}", c.runs.display()))?;
    println!(
        "report: {} ({} sections: {}; {} images)",
        r.html.display(),
        r.sections.len(),
        r.sections.join(", "),
        r.images
    );
    Ok(())
}
