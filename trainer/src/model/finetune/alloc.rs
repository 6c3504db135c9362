//! Keeps glibc's malloc from handing libtorch's activation buffers back to the kernel
//! after every training step.
//!
//! By default glibc serves allocations above a (dynamic) threshold with mmap and
//! returns them with munmap on free, and trims the heap top above 128 KiB: a CPU
//! training step that allocates and frees gigabytes of activations then page-faults
//! on every fresh page, every step (issue 4 measured 2.4 M page faults and a 2.7x
//! slower step at 224 px). Keeping freed memory in the process makes the next step
//! reuse it. Peak memory is unchanged (what one step needs); what changes is that the
//! resident size stays at that peak instead of dropping between steps.

/// What [`tune_allocator`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocatorTuning {
    /// mallopt calls made (M_MMAP_MAX = 0, M_TRIM_THRESHOLD = off, M_TOP_PAD = 1 GiB),
    /// except those whose MALLOC_*_ environment variable the user set.
    Applied { skipped_by_env: Vec<&'static str> },
    /// `VCL_MALLOC_TUNING=0`: glibc's defaults kept.
    Disabled,
    /// Not glibc (or not Linux): nothing to do.
    Unsupported,
}

/// Tunes glibc malloc for training; call first thing in `main`, before libtorch
/// allocates. Settings the user already made through glibc's environment variables
/// (`MALLOC_MMAP_MAX_`, `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`) are left alone.
/// `VCL_MALLOC_TUNING=0` turns it off (for measuring the difference).
pub fn tune_allocator() -> AllocatorTuning {
    if std::env::var_os("VCL_MALLOC_TUNING").is_some_and(|v| v == "0") {
        return AllocatorTuning::Disabled;
    }
    imp::tune()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use std::os::raw::c_int;

    use super::AllocatorTuning;

    // Parameter numbers from glibc's <malloc.h>.
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_TOP_PAD: c_int = -2;
    const M_MMAP_MAX: c_int = -4;

    extern "C" {
        /// glibc's `int mallopt(int param, int value)`: 1 on success, 0 on error.
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }

    pub(super) fn tune() -> AllocatorTuning {
        let settings: [(&'static str, c_int, c_int); 3] = [
            // Never mmap: large blocks come from the heap and are reused after free.
            ("MALLOC_MMAP_MAX_", M_MMAP_MAX, 0),
            // -1 disables trimming (mallopt(3)); glibc reads the int as size_t.
            ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, -1),
            // Grow the heap in 1 GiB steps: fewer brk calls while the first step grows it.
            ("MALLOC_TOP_PAD_", M_TOP_PAD, 1 << 30),
        ];
        let mut skipped = Vec::new();
        for (env, param, value) in settings {
            if std::env::var_os(env).is_some() {
                skipped.push(env);
                continue;
            }
            // SAFETY: mallopt only changes allocator parameters; it is thread-safe in
            // glibc (it takes the arena locks) and takes no pointers.
            let ok = unsafe { mallopt(param, value) };
            if ok != 1 {
                tracing::warn!(param = env, value, "mallopt refused a setting");
            }
        }
        AllocatorTuning::Applied {
            skipped_by_env: skipped,
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    use super::AllocatorTuning;

    pub(super) fn tune() -> AllocatorTuning {
        AllocatorTuning::Unsupported
    }
}
