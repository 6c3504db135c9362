//! vcl's data layer, first in the flow dataset -> features -> model -> export -> serve:
//! the Algonauts 2023 / NSD layout (`algonauts`), the in-silico brain that writes the
//! same layout with known ground truth (`synth`), `.npy` files (`npy`), and where set-up
//! puts what the tools read (`paths`), and the binaries' logging (`logging`). No libtorch: it builds and tests in seconds.

pub mod algonauts;
pub mod cli;
pub mod error;
pub mod logging;
pub mod npy;
pub mod paths;
pub mod synth;

pub use error::DataError;
