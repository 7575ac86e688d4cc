//! The one error type of this crate.
//!
//! Every variant carries what the operator needs to act: the file and line, the device, the
//! job, and, where there is one, the fix.

use std::path::PathBuf;

use crate::schedule::Refusal;

/// Everything that can go wrong while discovering GPUs, loading memory profiles or scheduling.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// NVML (the NVIDIA management library) could not be loaded or initialised.
    #[error(
        "NVML is not available: {reason}\n  = help: install the NVIDIA driver (it provides \
         libnvidia-ml.so.1) and check that `nvidia-smi` works, or set `gpu_pool.kind: simulated` \
         (with a `gpus:` list) or `gpu_pool.kind: cpu` in the daemon config"
    )]
    NvmlUnavailable { reason: String },

    /// NVML works but a question about the device list itself failed.
    #[error("NVML could not {what}: {reason}\n  = help: check `nvidia-smi`; a driver/library version mismatch needs a reboot")]
    NvmlQuery { what: String, reason: String },

    /// An `include:` entry names no GPU that NVML reports.
    #[error(
        "gpu_pool.include names `{selector}`, but no GPU has that index or UUID; \
         the GPUs are: {available}\n  = help: use an index or a UUID from `nvidia-smi -L`"
    )]
    UnknownDevice { selector: String, available: String },

    /// Filtering (or an empty machine) left no device at all.
    #[error("the GPU pool is empty: {why}\n  = help: {help}")]
    EmptyPool { why: String, help: String },

    /// A pool configuration that parsed but makes no sense.
    #[error("invalid gpu_pool configuration: {message}")]
    Config { message: String },

    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    /// A memory profile is not valid YAML for the profile schema.
    #[error("{}:{line}:{column}: {message}\n{snippet}\n  = help: the schema is documented at the top of templates/profiles/liveavatar-14b.yaml", path.display())]
    ProfileParse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        snippet: String,
    },

    /// A memory profile parsed but holds impossible numbers.
    #[error("{}: {message}", path.display())]
    ProfileInvalid { path: PathBuf, message: String },

    /// A profile name that no loaded file provides.
    #[error("no memory profile named `{name}`; loaded profiles: {known}\n  = help: add templates/profiles/{name}.yaml")]
    UnknownProfile { name: String, known: String },

    /// The observed-peaks file or the lease table is not the JSON this crate writes.
    #[error("{}: not a valid {what} file: {message}\n  = help: move the file aside; it is rebuilt as jobs run", path.display())]
    StateFile {
        path: PathBuf,
        what: &'static str,
        message: String,
    },

    /// A job id the scheduler already holds (queued or running).
    #[error("job `{id}` is already queued or running")]
    DuplicateJob { id: String },

    /// A job id the scheduler does not hold in the state the call needs.
    #[error("job `{id}` is not {state}")]
    UnknownJob { id: String, state: &'static str },

    /// A card UUID the scheduler does not know.
    #[error("no GPU with UUID `{uuid}` in the pool")]
    UnknownCard { uuid: String },

    /// A job that cannot fit any card of the pool, with the suggestion to show the user.
    #[error("job `{id}` cannot run on this pool: {refusal}")]
    Refused { id: String, refusal: Box<Refusal> },
}
