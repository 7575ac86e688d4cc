//! The LibTorch backend (feature `tch`): Burn's `burn-tch` on the torch that
//! `scripts/install-libtorch.sh` installs (or the GPU machine's own torch of the same version).
//! Matmuls go through cuBLAS and unmasked attention through PyTorch's SDPA kernels, so on a
//! GPU this is the backend that runs the model at PyTorch's speed.
//!
//! What this module adds to the plain backend: the device a worker should use
//! ([`worker_device`]: the one card it sees, or the CPU) and PyTorch's deterministic mode
//! ([`set_deterministic`]), which tch has no binding for (a C++ shim, `csrc/`, built by
//! `build.rs` against the same torch). Deterministic mode plus `CUBLAS_WORKSPACE_CONFIG`
//! ([`CUBLAS_WORKSPACE_CONFIG`]) set before the first cuBLAS call is what makes a resumed job
//! give the same bits as an uninterrupted one on the same card type and torch build.

pub use burn_tch::{LibTorch, LibTorchDevice};

/// The cuBLAS workspace setting PyTorch's deterministic mode requires on CUDA (one fixed
/// workspace configuration, so cuBLAS picks the same reduction split every time). It must be
/// in the environment before the first cuBLAS handle is created.
pub const CUBLAS_WORKSPACE_CONFIG: (&str, &str) = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8");

mod ffi {
    extern "C" {
        pub fn wan_torch_set_deterministic(on: i32) -> i32;
        pub fn wan_torch_is_deterministic() -> i32;
    }
}

/// The device a worker renders on: CUDA device 0 when CUDA is usable (the daemon gives each
/// worker one card through `CUDA_VISIBLE_DEVICES`, so the leased card is always index 0),
/// else the CPU.
pub fn worker_device() -> LibTorchDevice {
    if tch::Cuda::is_available() {
        LibTorchDevice::Cuda(0)
    } else {
        LibTorchDevice::Cpu
    }
}

/// Whether CUDA is usable by this process's torch.
pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}

/// Turns PyTorch's deterministic mode on for this process: deterministic algorithms (an op
/// without a deterministic kernel raises rather than warns), cuDNN benchmarking off and its
/// deterministic algorithms on. The process must also have [`CUBLAS_WORKSPACE_CONFIG`] in its
/// environment before the first CUDA matmul. Call it once at start, before any tensor exists.
pub fn set_deterministic() -> Result<(), crate::WanError> {
    // SAFETY: the shim takes a plain int and catches every C++ exception itself.
    let status = unsafe { ffi::wan_torch_set_deterministic(1) };
    if status != 0 {
        return Err(crate::WanError::Input {
            message: "torch refused to turn deterministic algorithms on".into(),
        });
    }
    Ok(())
}

/// Whether [`set_deterministic`]'s settings are in force (read back from torch itself).
pub fn is_deterministic() -> bool {
    // SAFETY: no arguments; the shim catches every C++ exception itself.
    unsafe { ffi::wan_torch_is_deterministic() == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_mode_is_set_and_read_back_from_torch() {
        set_deterministic().expect("deterministic mode");
        assert!(is_deterministic());
    }

    #[test]
    fn without_cuda_the_worker_device_is_the_cpu() {
        if !cuda_available() {
            assert_eq!(worker_device(), LibTorchDevice::Cpu);
        }
    }
}
