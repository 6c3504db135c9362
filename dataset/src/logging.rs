//! Logs of every vcl binary: `tracing` to stderr, `RUST_LOG` or info.

/// Installs the subscriber; call once at the start of `main`. Colours only on a
/// terminal, so that logs captured to files stay plain text.
pub fn init() {
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}
