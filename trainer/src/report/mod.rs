//! `vcl report`: one page for a folder of runs (what `make demo` leaves in runs/demo):
//! the dataset, encoding accuracy per fit, the method comparison, cross-subject
//! transfer, training curves, and the analyses (lateralization, MI bound, probe,
//! landscape), from the files those commands wrote. `index.html` embeds every picture
//! (data URIs), so the one file opens anywhere and can be sent; `report.md` links them
//! by path. Nothing is recomputed: a section appears when its files are there.

pub mod plots;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine;

use crate::model::encoding::error::EncodingError;
use crate::model::encoding::fit::FitRecord;
use crate::model::encoding::store;
use crate::Result;
use vcl_dataset::algonauts::{summary, Dataset};

/// What went into a report.
#[derive(Debug, Clone)]
pub struct Report {
    pub html: PathBuf,
    pub markdown: PathBuf,
    pub sections: Vec<String>,
    pub images: usize,
}

enum Block {
    Text(String),
    /// A Markdown file of ours (prose and pipe tables).
    Markdown(PathBuf),
    Image(PathBuf, String),
}

struct Section {
    title: String,
    blocks: Vec<Block>,
}

/// `root` and its folders two levels down, sorted (checkpoints and encoders skipped):
/// walked once, then asked for each kind of file.
fn run_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        if depth < 2 {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let p = e.path();
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    if p.is_dir()
                        && !name.starts_with('.')
                        && name != "checkpoints"
                        && name != "encoders"
                    {
                        stack.push((p, depth + 1));
                    }
                }
            }
        }
        out.push(dir);
    }
    out.sort();
    out
}

/// The folders of `dirs` holding `file`.
fn holding(dirs: &[PathBuf], file: &str) -> Vec<PathBuf> {
    dirs.iter()
        .filter(|d| d.join(file).is_file())
        .cloned()
        .collect()
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

fn pngs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    v.sort();
    v
}

fn gather(root: &Path) -> Result<Vec<Section>> {
    let mut sections = Vec::new();
    let dirs = run_dirs(root);
    let fits = holding(&dirs, "fit.json");

    // The dataset: from the first fit's data folder, if it is still there.
    if let Some(fit) = fits.first() {
        let record: FitRecord = store::read_json(&fit.join("fit.json"))?;
        let data = &record.config.data_dir;
        let mut blocks = vec![Block::Text(format!("Data: {}", data.display()))];
        match Dataset::open(data).and_then(|ds| summary::summarize(&ds)) {
            Ok(s) => blocks.push(Block::Text(s.to_markdown())),
            Err(e) => blocks.push(Block::Text(format!(
                "(the dataset could not be read now: {e})"
            ))),
        }
        sections.push(Section {
            title: "Dataset".into(),
            blocks,
        });
    }
    let mut blocks = Vec::new();
    for fit in &fits {
        let ev = fit.join("evaluation");
        if ev.join("results.md").is_file() {
            blocks.push(Block::Text(format!("### {}", rel(root, fit))));
            blocks.push(Block::Markdown(ev.join("results.md")));
            for p in pngs(&ev) {
                blocks.push(Block::Image(p, format!("{}: evaluation", rel(root, fit))));
            }
        }
    }
    if !blocks.is_empty() {
        sections.push(Section {
            title: "Encoding accuracy (held-out images)".into(),
            blocks,
        });
    }
    let simple = |title: &str, file: &str| -> Option<Section> {
        let mut blocks = Vec::new();
        for dir in holding(&dirs, file) {
            blocks.push(Block::Text(format!("### {}", rel(root, &dir))));
            blocks.push(Block::Markdown(dir.join(file)));
            for p in pngs(&dir) {
                blocks.push(Block::Image(p, format!("{title}: {}", rel(root, &dir))));
            }
            let overlays = dir.join("overlays");
            for p in pngs(&overlays) {
                let name = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                blocks.push(Block::Image(
                    p,
                    format!("saliency of {name}: image, gradient, Grad-CAM, HiResCAM"),
                ));
            }
        }
        (!blocks.is_empty()).then(|| Section {
            title: title.into(),
            blocks,
        })
    };
    sections.extend(simple("Comparison of methods", "comparison.md"));
    let mut blocks = Vec::new();
    for dir in holding(&dirs, "transfer.csv") {
        blocks.push(Block::Text(format!("### {}", rel(root, &dir))));
        for p in pngs(&dir) {
            blocks.push(Block::Image(p, "cross-subject transfer".into()));
        }
    }
    if !blocks.is_empty() {
        sections.push(Section {
            title: "Cross-subject transfer".into(),
            blocks,
        });
    }
    let mut blocks = Vec::new();
    for run in holding(&dirs, "history.csv") {
        let json = |f: &str| {
            std::fs::read_to_string(run.join(f))
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .unwrap_or_default()
        };
        let (cfg, sum) = (json("config.json"), json("summary.json"));
        let line = format!(
            "method {}, subjects {}, ROI {} {}, {} px; {} epochs in {:.0} s ({:.1} images/s){}",
            cfg["method"].as_str().unwrap_or("?"),
            cfg["subjects"],
            cfg["hemisphere"].as_str().unwrap_or("?"),
            cfg["roi"].as_str().unwrap_or("?"),
            cfg["input_size"],
            sum["epochs_completed"].as_u64().unwrap_or(0),
            sum["wall_seconds"].as_f64().unwrap_or(0.0),
            sum["images_per_s"].as_f64().unwrap_or(0.0),
            if sum["completed"].as_bool() == Some(false) {
                " (unfinished)"
            } else {
                ""
            }
        );
        blocks.push(Block::Text(format!("### {}\n{line}", rel(root, &run))));
        for p in pngs(&run) {
            blocks.push(Block::Image(
                p,
                format!("training curves of {}", rel(root, &run)),
            ));
        }
    }
    if !blocks.is_empty() {
        sections.push(Section {
            title: "Fine-tuning".into(),
            blocks,
        });
    }
    sections.extend(simple("Lateralization (saliency)", "lateralization.md"));
    sections.extend(simple("Mutual-information lower bound", "mi.md"));
    sections.extend(simple("Classification probe", "probe.md"));
    sections.extend(simple("Model landscape", "landscape.md"));
    Ok(sections)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Our Markdown (headings, paragraphs, pipe tables) as HTML.
fn markdown_html(md: &str) -> String {
    let mut html = String::new();
    let mut table: Vec<Vec<String>> = Vec::new();
    let flush = |table: &mut Vec<Vec<String>>, html: &mut String| {
        if table.is_empty() {
            return;
        }
        html.push_str("<table>");
        for (i, row) in table.iter().enumerate() {
            let tag = if i == 0 { "th" } else { "td" };
            html.push_str("<tr>");
            for cell in row {
                let _ = write!(html, "<{tag}>{}</{tag}>", escape(cell));
            }
            html.push_str("</tr>");
        }
        html.push_str("</table>\n");
        table.clear();
    };
    for line in md.lines() {
        let t = line.trim();
        if t.starts_with('|') {
            let cells: Vec<String> = t
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            let separator = cells
                .iter()
                .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':')));
            if !separator {
                table.push(cells);
            }
            continue;
        }
        flush(&mut table, &mut html);
        if let Some(h) = t.strip_prefix("### ") {
            let _ = writeln!(html, "<h3>{}</h3>", escape(h));
        } else if let Some(h) = t.strip_prefix("## ") {
            let _ = writeln!(html, "<h3>{}</h3>", escape(h));
        } else if let Some(h) = t.strip_prefix("# ") {
            let _ = writeln!(html, "<h3>{}</h3>", escape(h));
        } else if !t.is_empty() {
            let _ = writeln!(html, "<p>{}</p>", escape(t));
        }
    }
    flush(&mut table, &mut html);
    html
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}\
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}\
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}figure{margin:1em 0}\
img{max-width:100%;border:1px solid #eee}figcaption{font-size:.8em;color:#555}nav a{margin-right:1em}";

/// After load, records on <body> how many images decoded and how many did not, so a
/// headless browser (or a reader's console) can tell a broken page at once.
const CHECK: &str = "window.addEventListener('load',function(){var ok=0,bad=[];\
document.querySelectorAll('img').forEach(function(i){if(i.complete&&i.naturalWidth>0){ok++}else{bad.push(i.alt)}});\
document.body.setAttribute('data-images-ok',ok);document.body.setAttribute('data-images-broken',bad.length);\
if(bad.length){console.error('broken images: '+bad.join(', '))}});";

/// What `vcl report` asks for.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportConfig {
    /// The folder of runs (e.g. runs/demo): fits, fine-tuning runs, comparisons and
    /// analysis outputs, up to two levels down.
    pub runs: PathBuf,
    /// Output folder (default: RUNS/report): index.html and report.md.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Writes `out/index.html` (pictures embedded) and `out/report.md` for the runs under
/// `root`.
pub fn report(root: &Path, out: &Path) -> Result<Report> {
    if !root.is_dir() {
        return Err(EncodingError::file(root, "not a folder of runs").into());
    }
    let sections = gather(root)?;
    if sections.is_empty() {
        return Err(EncodingError::file(
            root,
            "nothing to report: no fit, fine-tuning run or analysis output found (two levels deep)",
        )
        .into());
    }
    std::fs::create_dir_all(out).map_err(|e| EncodingError::file(out, e))?;
    let title = format!("vcl report: {}", root.display());
    let mut html = format!("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body><h1>{}</h1><nav>", escape(&title), escape(&title));
    let mut md = format!("# {title}\n\n");
    for (i, s) in sections.iter().enumerate() {
        let _ = write!(html, "<a href=\"#s{i}\">{}</a>", escape(&s.title));
    }
    html.push_str("</nav>\n");
    let mut images = 0;
    for (i, s) in sections.iter().enumerate() {
        let _ = writeln!(html, "<h2 id=\"s{i}\">{}</h2>", escape(&s.title));
        let _ = writeln!(md, "## {}\n", s.title);
        for b in &s.blocks {
            match b {
                Block::Text(t) => {
                    html.push_str(&markdown_html(t));
                    let _ = writeln!(md, "{t}\n");
                }
                Block::Markdown(p) => {
                    let text = std::fs::read_to_string(p).map_err(|e| EncodingError::file(p, e))?;
                    // Its own picture links are relative to its folder; the section
                    // shows those pictures itself.
                    let text: String = text
                        .lines()
                        .filter(|l| !l.trim_start().starts_with("!["))
                        .map(|l| format!("{l}\n"))
                        .collect();
                    html.push_str(&markdown_html(&text));
                    let _ = writeln!(md, "{}\n", text.trim_end());
                }
                Block::Image(p, caption) => {
                    let bytes = std::fs::read(p).map_err(|e| EncodingError::file(p, e))?;
                    let data = base64::engine::general_purpose::STANDARD.encode(bytes);
                    let _ = writeln!(
                        html,
                        "<figure><img alt=\"{}\" src=\"data:image/png;base64,{data}\"><figcaption>{}</figcaption></figure>",
                        escape(&rel(root, p)),
                        escape(caption)
                    );
                    let link = pathdiff(out, p);
                    let _ = writeln!(md, "![{caption}]({link})\n");
                    images += 1;
                }
            }
        }
    }
    let _ = writeln!(html, "<script>{CHECK}</script></body></html>");
    let html_path = out.join("index.html");
    std::fs::write(&html_path, html).map_err(|e| EncodingError::file(&html_path, e))?;
    let md_path = out.join("report.md");
    std::fs::write(&md_path, md).map_err(|e| EncodingError::file(&md_path, e))?;
    Ok(Report {
        html: html_path,
        markdown: md_path,
        sections: sections.into_iter().map(|s| s.title).collect(),
        images,
    })
}

/// `target` relative to the folder `from` (both made absolute), for Markdown links.
fn pathdiff(from: &Path, target: &Path) -> String {
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (from, target) = (abs(from), abs(target));
    let common = from
        .components()
        .zip(target.components())
        .take_while(|(a, b)| a == b)
        .count();
    let ups = from.components().count() - common;
    let mut out = PathBuf::new();
    for _ in 0..ups {
        out.push("..");
    }
    for c in target.components().skip(common) {
        out.push(c);
    }
    out.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_tables_become_html_tables() {
        let h = markdown_html("A <b> note.\n\n| a | b |\n|---|---:|\n| 1 | 2 |\n\n### x");
        assert_eq!(
            h,
            "<p>A &lt;b&gt; note.</p>\n<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>\n<h3>x</h3>\n"
        );
    }

    #[test]
    fn relative_links() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("runs/demo/report");
        let b = d.path().join("runs/demo/cl/loss.png");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(b.parent().unwrap()).unwrap();
        std::fs::write(&b, b"x").unwrap();
        assert_eq!(pathdiff(&a, &b), "../cl/loss.png");
    }
}
