//! What produced a result, recorded next to it (fine-tuning runs, exported manifests).

/// `git rev-parse HEAD` of the checkout this crate was built from, `+dirty` with
/// tracked changes; None without git or outside a checkout. The crate's folder, not
/// the current directory: the commit is that of the code that made the result.
pub fn git_commit() -> Option<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = run(&["rev-parse", "HEAD"]).filter(|s| !s.is_empty())?;
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}+dirty") } else { head })
}
