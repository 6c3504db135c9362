//! Where tensors compute: the device a command runs on (`--device`), the precision it
//! trains in, and what makes CUDA fast without changing results: host-to-device copies
//! from pinned memory that do not wait for the GPU, cuDNN's autotuner.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// What went wrong choosing a device; names the value asked for.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device '{0}': expected auto, cpu, cuda or cuda:N")]
    Unknown(String),
    #[error(
        "device '{asked}' asked for, but libtorch sees {count} CUDA device(s) \
         (a CPU-only libtorch, no driver, or CUDA_VISIBLE_DEVICES hiding the GPU)"
    )]
    Unavailable { asked: String, count: i64 },
}

/// `--device`: `auto` (CUDA when libtorch sees a GPU, else the CPU), `cpu`, `cuda`
/// (GPU 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| DeviceError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// The libtorch device, refusing a GPU that is not there (a run asked to use CUDA
    /// must not quietly take hours on the CPU). On CUDA, cuDNN's autotuner is turned on:
    /// every command here runs fixed shapes, where it pays after the first batch.
    pub fn resolve(self) -> Result<Device, DeviceError> {
        let count = tch::Cuda::device_count();
        let device = match self {
            DeviceChoice::Auto => Device::cuda_if_available(),
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Cuda(n) if (n as i64) < count && tch::Cuda::is_available() => {
                Device::Cuda(n)
            }
            DeviceChoice::Cuda(_) => {
                return Err(DeviceError::Unavailable {
                    asked: self.to_string(),
                    count,
                })
            }
        };
        if device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        Ok(device)
    }
}

/// A CPU tensor on `device`. To a GPU the copy goes through pinned memory and does not
/// wait for the GPU's queue: the host prepares the next batch while the GPU computes.
/// libtorch's caching host allocator keeps the pinned block alive until the copy has run.
pub fn upload(t: &Tensor, device: Device) -> Tensor {
    if device.is_cuda() && t.device() == Device::Cpu {
        t.pin_memory(device)
            .to_device_(device, t.kind(), true, false)
    } else {
        t.to_device(device)
    }
}

/// The floating-point precision of training's forward and backward passes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Hash, clap::ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 throughout (the paper's; the CPU's only precision).
    #[default]
    Fp32,
    /// bfloat16 autocast: float32's range, so no loss scaling (CUDA only).
    Bf16,
    /// float16 autocast with dynamic loss scaling, as PyTorch's GradScaler (CUDA only).
    Fp16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    /// The autocast dtype; None for float32.
    fn autocast_kind(self) -> Option<Kind> {
        match self {
            Precision::Fp32 => None,
            Precision::Bf16 => Some(Kind::BFloat16),
            Precision::Fp16 => Some(Kind::Half),
        }
    }

    /// What `self` becomes on `device`: autocast is CUDA's; elsewhere float32.
    pub fn on(self, device: Device) -> Precision {
        if device.is_cuda() {
            self
        } else {
            Precision::Fp32
        }
    }

    /// Runs `f` under CUDA autocast in this precision (float32: plainly).
    pub fn autocast<T>(self, f: impl FnOnce() -> T) -> T {
        match self.autocast_kind() {
            None => f(),
            Some(kind) => {
                set_cuda_autocast_kind(kind);
                tch::autocast(true, f)
            }
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// tch 0.24 switches autocast on and off but always in libtorch's default float16;
// bfloat16 needs ATen's own setter. These are its C++ symbols (Itanium mangling of
// `at::autocast::{set,get}_autocast_dtype(c10::DeviceType, c10::ScalarType)`); a
// signature change in another libtorch fails the link, not the run. Both enums are
// int8_t, passed as integers, and neither function throws.
extern "C" {
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_autocast_set_dtype(device_type: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
    fn at_autocast_get_dtype(device_type: i8) -> i8;
}

/// c10::DeviceType::CUDA.
const C10_CUDA: i8 = 1;

fn scalar_type(kind: Kind) -> i8 {
    match kind {
        Kind::Half => 5,
        Kind::BFloat16 => 15,
        _ => 6, // Float
    }
}

/// Sets the dtype CUDA autocast casts to (thread-local in ATen, like autocast itself).
fn set_cuda_autocast_kind(kind: Kind) {
    // SAFETY: a plain setter of a thread-local array, with an in-range ScalarType.
    unsafe { at_autocast_set_dtype(C10_CUDA, scalar_type(kind)) }
}

/// The dtype CUDA autocast casts to (5: float16, 15: bfloat16).
pub fn cuda_autocast_scalar_type() -> i8 {
    // SAFETY: a plain getter.
    unsafe { at_autocast_get_dtype(C10_CUDA) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_bad_ones_are_named() {
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!("CPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        let e = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(e.contains("'tpu'"), "{e}");
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert_eq!(DeviceChoice::Cpu.resolve().unwrap(), Device::Cpu);
        let n = tch::Cuda::device_count() as usize;
        let e = DeviceChoice::Cuda(n).resolve().unwrap_err().to_string();
        assert!(e.contains(&format!("cuda:{n}")), "{e}");
    }

    #[test]
    fn autocast_dtype_is_set_through_aten() {
        set_cuda_autocast_kind(Kind::BFloat16);
        assert_eq!(cuda_autocast_scalar_type(), 15);
        set_cuda_autocast_kind(Kind::Half);
        assert_eq!(cuda_autocast_scalar_type(), 5);
    }

    #[test]
    fn precision_is_float32_off_cuda_and_uploads_keep_values() {
        assert_eq!(Precision::Bf16.on(Device::Cpu), Precision::Fp32);
        assert_eq!(Precision::Fp16.on(Device::Cuda(0)), Precision::Fp16);
        let t = Tensor::from_slice(&[1u8, 2, 255]);
        let u = upload(&t, Device::Cpu);
        assert_eq!(Vec::<u8>::try_from(&u).unwrap(), vec![1, 2, 255]);
        assert_eq!(serde_json::to_string(&Precision::Bf16).unwrap(), "\"bf16\"");
    }
}
