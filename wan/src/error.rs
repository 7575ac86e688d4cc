use std::path::PathBuf;

/// Errors of the `wan` crate. Every variant names the file (and where it applies the
/// tensor key) so a user with a broken model directory knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum WanError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid index file: {message}")]
    BadIndex { path: PathBuf, message: String },
    #[error("{path}: cannot load tensors: {message}")]
    Store { path: PathBuf, message: String },
    #[error("{path}: tensor `{key}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{dir}: tensor `{key}` is missing (looked in: {looked_in})")]
    MissingTensor {
        dir: PathBuf,
        key: String,
        looked_in: String,
    },
    #[error(
        "{path}: tensor `{key}` is not a parameter of the model (renamed or from another model?)"
    )]
    UnexpectedTensor { path: PathBuf, key: String },
    #[error("{path}: tensor `{key}`: {message}")]
    BadTensor {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{path}: unsupported or invalid model config: {message}")]
    BadConfig { path: PathBuf, message: String },
    #[error("LoRA: {message}")]
    Lora { message: String },
    #[error("{path}: the LoRA adapts {found} linear layers ({} tensors), the model expects {expected} ({} tensors): a partial LoRA is not merged; missing: {missing}", 2 * found, 2 * expected)]
    LoraIncomplete {
        path: PathBuf,
        found: usize,
        expected: usize,
        missing: String,
    },
    #[error("carry: {message}")]
    Carry { message: String },
    #[error("{path}: not a usable umT5 tokenizer: {message}")]
    BadTokenizer { path: PathBuf, message: String },
    #[error("carry belongs to another job: its {field} is {found}, this job's is {expected}")]
    CarryMismatch {
        field: String,
        expected: String,
        found: String,
    },
    #[error("{message}")]
    Input { message: String },
}
