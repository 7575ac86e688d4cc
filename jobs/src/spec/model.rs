//! What a job's `engine.model` refers to, as a typed value.
//!
//! `engine.model` is a string in the job file: `builtin:tiny`, a checkpoint directory, a Live
//! Avatar release directory, or whatever a command engine understands. Which of these it is
//! decides the engine that runs, the memory profile placement plans with, the default frame
//! rate and the warm worker a job may share. Intake decides it once ([`ModelRef::resolve`],
//! called by the parser, which knows the engine kind and the model) and the resolved job
//! keeps the answer (`engine.model_ref` in `job.yaml`); everything after intake reads it
//! instead of looking at the string or the file system again.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::EngineKind;

/// The prefix of a built-in model's name in `engine.model`.
pub const BUILTIN_PREFIX: &str = "builtin:";

/// A job's model, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ModelRef {
    /// `builtin:<name>`: weights the native engine generates from a seed (the demo model).
    Builtin { name: String },
    /// A directory holding a tiny-architecture checkpoint (`config.json`,
    /// `model.safetensors`), rendered by the native engine.
    Checkpoint { dir: PathBuf },
    /// A Live Avatar release directory (see the `release-layout` crate), rendered by the
    /// native engine's `wan` pipeline.
    Release { dir: PathBuf },
    /// An engine the operator declared (`engines:` in the daemon config), and the model
    /// string it is given as written.
    Command { engine: String, model: String },
}

impl ModelRef {
    /// Decides what `model` refers to for an engine of `kind` (named `engine` when it is a
    /// command engine). A native model that is neither `builtin:` nor an absolute directory
    /// holding a release's config is a checkpoint directory; whether it holds one is checked
    /// when the worker loads it.
    pub fn resolve(kind: EngineKind, engine: Option<&str>, model: &str) -> ModelRef {
        match kind {
            EngineKind::Command => ModelRef::Command {
                engine: engine.unwrap_or_default().to_string(),
                model: model.to_string(),
            },
            EngineKind::Native => {
                if let Some(name) = model.strip_prefix(BUILTIN_PREFIX) {
                    ModelRef::Builtin {
                        name: name.to_string(),
                    }
                } else if release_layout::is_live_avatar_release(Path::new(model)) {
                    ModelRef::Release { dir: model.into() }
                } else {
                    ModelRef::Checkpoint { dir: model.into() }
                }
            }
        }
    }

    /// The engine kind that renders this model.
    pub fn engine_kind(&self) -> EngineKind {
        match self {
            ModelRef::Command { .. } => EngineKind::Command,
            _ => EngineKind::Native,
        }
    }

    /// Whether this is a Live Avatar release for the native engine.
    pub fn is_release(&self) -> bool {
        matches!(self, ModelRef::Release { .. })
    }

    /// Whether this is the built-in model `name`.
    pub fn is_builtin(&self, name: &str) -> bool {
        matches!(self, ModelRef::Builtin { name: own } if own == name)
    }
}

/// The model as `engine.model` names it: `builtin:<name>`, the directory, or a command
/// engine's model string.
impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelRef::Builtin { name } => write!(f, "{BUILTIN_PREFIX}{name}"),
            ModelRef::Checkpoint { dir } | ModelRef::Release { dir } => {
                write!(f, "{}", dir.display())
            }
            ModelRef::Command { model, .. } => f.write_str(model),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_checkpoint_and_command_models_resolve_from_their_words() {
        let builtin = ModelRef::resolve(EngineKind::Native, None, "builtin:tiny");
        assert_eq!(
            builtin,
            ModelRef::Builtin {
                name: "tiny".into()
            }
        );
        assert!(builtin.is_builtin("tiny"));
        assert_eq!(builtin.to_string(), "builtin:tiny");
        let checkpoint = ModelRef::resolve(EngineKind::Native, None, "/models/tiny-ft");
        assert_eq!(
            checkpoint,
            ModelRef::Checkpoint {
                dir: "/models/tiny-ft".into()
            }
        );
        let command = ModelRef::resolve(
            EngineKind::Command,
            Some("liveavatar-torch"),
            "builtin:tiny",
        );
        assert_eq!(command.engine_kind(), EngineKind::Command);
        assert!(
            !command.is_builtin("tiny"),
            "a command engine's model is its own"
        );
        assert_eq!(command.to_string(), "builtin:tiny");
    }

    #[test]
    fn a_directory_with_the_release_config_resolves_to_a_release() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let model = tmp.path().display().to_string();
        assert!(!ModelRef::resolve(EngineKind::Native, None, &model).is_release());
        std::fs::create_dir_all(release_layout::s2v_dir(tmp.path())).expect("mkdir");
        std::fs::write(release_layout::config_file(tmp.path()), "{}").expect("config");
        let release = ModelRef::resolve(EngineKind::Native, None, &model);
        assert_eq!(
            release,
            ModelRef::Release {
                dir: tmp.path().to_path_buf()
            }
        );
        assert_eq!(release.to_string(), model);
        assert!(
            !ModelRef::resolve(EngineKind::Command, Some("e"), &model).is_release(),
            "a command engine renders its model itself"
        );
    }

    #[test]
    fn a_model_ref_reads_back_from_yaml() {
        for model in [
            ModelRef::Builtin {
                name: "tiny".into(),
            },
            ModelRef::Release {
                dir: "/srv/models/liveavatar".into(),
            },
            ModelRef::Command {
                engine: "numpy-example".into(),
                model: String::new(),
            },
        ] {
            let yaml = serde_yaml::to_string(&model).expect("serialises");
            let back: ModelRef = serde_yaml::from_str(&yaml).expect("parses");
            assert_eq!(back, model, "{yaml}");
        }
        let yaml = "type: release\ndir: /srv/m\n";
        assert!(matches!(
            serde_yaml::from_str::<ModelRef>(yaml).expect("parses"),
            ModelRef::Release { .. }
        ));
        assert!(serde_yaml::from_str::<ModelRef>("type: release\ndir: /a\nextra: 1\n").is_err());
    }
}
