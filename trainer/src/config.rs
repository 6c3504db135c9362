//! Every command's configuration is one type, defined once in the module that runs it
//! (`FitConfig`, `FinetuneConfig`, `ExportOptions`, ...), deriving clap's `Args`: the
//! flags, their help and their defaults live on the fields. The CLI flattens those
//! types; code and tests build them from the same defaults with [`from_flags`].

use std::ffi::OsString;

#[derive(clap::Parser)]
#[command(no_binary_name = true)]
struct Flags<T: clap::Args> {
    #[command(flatten)]
    config: T,
}

/// A configuration as the command line would give it for `flags` (defaults for the
/// rest), e.g. `from_flags::<FitConfig>(["--data", "d", "--out", "o"])`.
pub fn from_flags<T, I>(flags: I) -> Result<T, clap::Error>
where
    T: clap::Args,
    I: IntoIterator,
    I::Item: Into<OsString> + Clone,
{
    <Flags<T> as clap::Parser>::try_parse_from(flags).map(|f| f.config)
}
