//! Job files and job state: where a YAML file dropped into the spool becomes a job, and
//! where that job's life is recorded on disk.
//!
//! # A job file becomes a job
//! [`load_job_file`] (or [`parse_job`] for text already in memory) takes a job file through
//! every check before anything runs: size and encoding, YAML syntax, known keys, types,
//! ranges, mail addresses and webhook URLs, and the rule that inputs and outputs stay inside
//! the roots the operator allowed, after symlinks and `..` are resolved. A `template:` is
//! merged underneath the job. The result is a [`JobSpec`] with every default filled in.
//!
//! Every rejection reads like a compiler error, because the people who write job files are
//! not the people who wrote the daemon:
//!
//! ```text
//! error: unknown key `infer_frame` in `render`
//!   --> /spool/incoming/job.yaml:9:3
//!    |
//!  9 |   infer_frame: 32
//!    |   ^
//!    = help: did you mean `infer_frames`? valid keys here: `size`, `num_clip`, ...
//! ```
//!
//! The [`diag`] module that prints these knows nothing about jobs; the daemon uses it for its
//! own configuration file.
//!
//! # Job state
//! [`state`] holds what the daemon and the CLI share: job ids, the per-job folder with its
//! resolved `job.yaml`, `state.json` and `events.jsonl`, and the atomic, fsynced writes that
//! make an acknowledged job survive a power cut.
//!
//! # Module map
//! - [`spec`]: the resolved job and its defaults.
//! - `parse` → `text` → `walk` → `file` → `validate` (+ `paths`, `rules`) → `template`: the
//!   stages a file goes through, in order.
//! - [`diag`]: diagnostics; [`state`]: on-disk state.
//! - [`access`] (may the owner use a path) → [`reach`] (a job's files opened from their
//!   allowed root without following symlinks, the owner's rights checked on what was opened).

pub mod access;
pub mod batch;
pub mod diag;
mod error;
mod file;
pub mod index;
mod locate;
mod parse;
mod paths;
pub mod reach;
mod rules;
mod source;
pub mod spec;
pub mod state;
mod template;
mod text;
mod validate;
mod walk;

pub use batch::{is_batch, parse_batch, parse_batch_bytes, BatchSpec};
pub use error::{JobFileError, JobsError, StateError};
pub use parse::{load_job_file, parse_job, parse_job_bytes, ParseContext};
pub use paths::Roots;
pub use spec::JobSpec;
pub use template::{available_templates, job_templates_dir};
pub use text::{escape_lines, escape_text, needs_escape, MAX_JOB_FILE_BYTES};
pub use validate::MAX_PROMPT_CHARS;

/// Checks a name an operator gives an engine in the daemon config, with the rule job files
/// follow for `engine.name`, so every declared engine can be named by a job.
pub fn check_engine_name(name: &str) -> Result<(), String> {
    rules::check_name(name)
}
