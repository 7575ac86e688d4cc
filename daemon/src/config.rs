//! The daemon's configuration file.
//!
//! One YAML file (`/etc/reelspool/reelspool.yaml` unless `--config` or `REELSPOOL_CONFIG` says
//! otherwise) names every directory the daemon may touch. It is checked with the same care as a
//! job file: unknown keys are errors, every error names file:line:col, and relative paths are
//! refused because the daemon runs with `/` as its working directory under systemd.

use std::path::{Path, PathBuf};

use jobs::diag::{self, Diagnostic};
use serde::{Deserialize, Serialize};

pub mod executor;

pub use executor::{ExecutorConfig, SlurmConfig};

/// Where the config lives when neither `--config` nor `REELSPOOL_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/reelspool/reelspool.yaml";

/// The directories a job's paths may point into.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AllowedRoots {
    /// Images and audio may only be read from under these directories.
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
    /// Videos may only be written under these directories.
    #[serde(default)]
    pub outputs: Vec<PathBuf>,
}

/// How the daemon supervises its worker processes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// A worker that prints nothing for this long is presumed hung and killed.
    pub heartbeat_timeout_secs: u64,
    /// How long a worker may take to checkpoint and exit after SIGTERM before it is killed.
    pub stop_timeout_secs: u64,
    /// The program started as the worker; empty means this very binary.
    pub program: Option<PathBuf>,
    /// A worker with no job for this long exits and frees its card. Until then it keeps its
    /// model (and compiled kernels) loaded for the next job on its card that uses the same
    /// model. 0 turns warm workers off: one process per job, as before.
    pub idle_unload_secs: u64,
    /// Compiled kernels and autotune results shared by every worker; defaults to
    /// `<state_dir>/kernel-cache`.
    pub kernel_cache_dir: Option<PathBuf>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            heartbeat_timeout_secs: 300,
            stop_timeout_secs: 60,
            program: None,
            idle_unload_secs: 600,
            kernel_cache_dir: None,
        }
    }
}

/// `http:` in the config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `address:port` to listen on, e.g. `127.0.0.1:7878`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// A unix socket to listen on, e.g. `/run/reelspool/http.sock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// The file holding the token for actions [default: `$CREDENTIALS_DIRECTORY/http-token`
    /// under systemd, else /etc/reelspool/credentials/http-token when it exists].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Holds `tmp/`, `incoming/`, `processing/` and `rejected/`.
    pub spool_dir: PathBuf,
    /// Holds `jobs/<id>/`, the lease table and the notice outbox.
    pub state_dir: PathBuf,
    /// Daily rolling log files.
    pub log_dir: PathBuf,
    /// Where job inputs and outputs may live.
    #[serde(default)]
    pub allowed_roots: AllowedRoots,
    /// Job presets; defaults to the templates shipped beside the binary.
    #[serde(default)]
    pub templates_dir: Option<PathBuf>,
    /// Where generated model weights (`builtin:tiny`) are cached; defaults to `<state_dir>/models`.
    #[serde(default)]
    pub model_cache_dir: Option<PathBuf>,
    /// The GPUs (or CPU slots) jobs run on.
    #[serde(default)]
    pub gpu_pool: gpu_pool::config::PoolConfig,
    /// Worker supervision.
    #[serde(default)]
    pub worker: WorkerConfig,
    /// Accept and queue jobs but start none (maintenance, or tests of intake alone).
    #[serde(default)]
    pub hold_queue: bool,
    /// Email and webhook delivery.
    #[serde(default)]
    pub notices: notices::NoticeConfig,
    /// External model programs jobs may use with `engine: {kind: command, name: NAME}`.
    /// Only the operator declares programs; a job file can only name one of these.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub engines: std::collections::BTreeMap<String, render::engine::external::EngineDeclaration>,
    /// Where workers run: this machine (`kind: local`, the default) or a Slurm cluster.
    #[serde(default, skip_serializing_if = "ExecutorConfig::is_local")]
    pub executor: ExecutorConfig,
    /// The group whose members may submit jobs (besides root and the service user).
    #[serde(default = "default_submit_group")]
    pub submit_group: String,
    /// The web server (dashboard, JSON API, `/metrics`); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpConfig>,
    /// While a job runs on a card, `<dir>/<card index>` holds the job id (dcgm-exporter's
    /// HPC job mapping), so DCGM's own series get a job label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dcgm_job_mapping_dir: Option<PathBuf>,
}

fn default_submit_group() -> String {
    "reelspool-submit".to_string()
}

/// A configuration file that cannot be used, with a message that says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}\n  = help: pass another file with --config FILE or set REELSPOOL_CONFIG")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
}

impl DaemonConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        DaemonConfig::parse(&path.display().to_string(), &text)
    }

    /// Parses config text; `file` is only used in messages.
    pub fn parse(file: &str, text: &str) -> Result<DaemonConfig, ConfigError> {
        let config: DaemonConfig = serde_yaml::from_str(text).map_err(|err| {
            ConfigError::Invalid(Box::new(diag::from_yaml_error(
                file,
                text,
                &err,
                Some(
                    "see README.md, section \"Configuration\", for every key and its default"
                        .to_string(),
                ),
            )))
        })?;
        config.check_paths(file, text)?;
        config.check_engines(file, text)?;
        config.check_executor(file, text)?;
        Ok(config)
    }

    fn check_executor(&self, file: &str, text: &str) -> Result<(), ConfigError> {
        let ExecutorConfig::Slurm(slurm) = &self.executor else {
            return Ok(());
        };
        let Some(message) = slurm.problem() else {
            return Ok(());
        };
        let (line, column) = diag::locate_key(text, &["executor"]).unwrap_or((1, 1));
        Err(ConfigError::Invalid(Box::new(Diagnostic::at(
            file,
            text,
            line,
            column,
            message,
            Some("see README.md, section \"Running on a Slurm cluster\"".to_string()),
        ))))
    }

    fn check_engines(&self, file: &str, text: &str) -> Result<(), ConfigError> {
        for (name, declaration) in &self.engines {
            let problem = jobs::check_engine_name(name)
                .err()
                .map(|why| format!("engine name `{name}` {why}"))
                .or_else(|| {
                    declaration
                        .problem()
                        .map(|why| format!("engine `{name}`: {why}"))
                });
            if let Some(message) = problem {
                let (line, column) = diag::locate_key(text, &["engines", name]).unwrap_or((1, 1));
                return Err(ConfigError::Invalid(Box::new(Diagnostic::at(
                    file,
                    text,
                    line,
                    column,
                    message,
                    Some(
                        "see docs/engine-protocol.md, section \"Declaring an engine\"".to_string(),
                    ),
                ))));
            }
        }
        Ok(())
    }

    fn check_paths(&self, file: &str, text: &str) -> Result<(), ConfigError> {
        let mut named: Vec<(Vec<&str>, &Path)> = vec![
            (vec!["spool_dir"], self.spool_dir.as_path()),
            (vec!["state_dir"], self.state_dir.as_path()),
            (vec!["log_dir"], self.log_dir.as_path()),
        ];
        for root in &self.allowed_roots.inputs {
            named.push((vec!["allowed_roots", "inputs"], root.as_path()));
        }
        for root in &self.allowed_roots.outputs {
            named.push((vec!["allowed_roots", "outputs"], root.as_path()));
        }
        if let Some(dir) = &self.templates_dir {
            named.push((vec!["templates_dir"], dir.as_path()));
        }
        if let Some(dir) = &self.model_cache_dir {
            named.push((vec!["model_cache_dir"], dir.as_path()));
        }
        if let Some(dir) = &self.dcgm_job_mapping_dir {
            named.push((vec!["dcgm_job_mapping_dir"], dir.as_path()));
        }
        if let Some(http) = &self.http {
            if let Some(socket) = &http.socket {
                named.push((vec!["http", "socket"], socket.as_path()));
            }
            if let Some(token) = &http.token_file {
                named.push((vec!["http", "token_file"], token.as_path()));
            }
        }
        for (key, path) in named {
            if !path.is_absolute() {
                let (line, column) = diag::locate_key(text, &key).unwrap_or((1, 1));
                return Err(ConfigError::Invalid(Box::new(Diagnostic::at(
                    file,
                    text,
                    line,
                    column,
                    format!(
                        "`{}` must be an absolute path, got `{}`",
                        key.join("."),
                        path.display()
                    ),
                    Some(
                        "the daemon runs from `/`; write the full path, e.g. /srv/media"
                            .to_string(),
                    ),
                ))));
            }
        }
        Ok(())
    }

    /// The job presets directory: the configured one, or the `templates/` shipped with the
    /// binary (installed under /usr/share, or the source tree during development).
    pub fn templates_dir(&self) -> PathBuf {
        if let Some(dir) = &self.templates_dir {
            return dir.clone();
        }
        default_templates_dir()
    }

    /// Where generated model weights are cached.
    /// The kernel and autotune cache's root (see `render::engine::kernel_cache`).
    pub fn kernel_cache_dir(&self) -> PathBuf {
        self.worker
            .kernel_cache_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("kernel-cache"))
    }

    pub fn model_cache_dir(&self) -> PathBuf {
        self.model_cache_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("models"))
    }

    /// The allowed roots in the form the job parser wants.
    pub fn roots(&self) -> jobs::Roots {
        jobs::Roots {
            inputs: self.allowed_roots.inputs.clone(),
            outputs: self.allowed_roots.outputs.clone(),
        }
    }
}

/// The templates that came with this binary: /usr/share/reelspool/templates for an installed
/// binary (one that lives under /usr), the source tree's `templates/` for a development build.
pub fn default_templates_dir() -> PathBuf {
    let installed = PathBuf::from("/usr/share/reelspool/templates");
    let installed_binary = std::env::current_exe()
        .map(|exe| exe.starts_with("/usr/"))
        .unwrap_or(false);
    let source_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
    if !installed_binary && source_tree.is_dir() {
        source_tree
    } else {
        installed
    }
}

/// Picks the config path: the flag, then `REELSPOOL_CONFIG`, then the default.
/// (clap already folds the environment variable into the flag.)
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "spool_dir: /tmp/s\nstate_dir: /tmp/st\nlog_dir: /tmp/l\n";

    #[test]
    fn accepts_minimal_config_with_defaults() {
        let config = DaemonConfig::parse("c.yaml", GOOD).expect("minimal config is valid");
        assert_eq!(config.spool_dir, PathBuf::from("/tmp/s"));
        assert_eq!(config.model_cache_dir(), PathBuf::from("/tmp/st/models"));
        assert!(config.allowed_roots.inputs.is_empty());
    }

    #[test]
    fn rejects_unknown_key_with_line_number() {
        let text = format!("{GOOD}spool_dri: /x\n");
        let err = DaemonConfig::parse("c.yaml", &text).expect_err("unknown key must fail");
        let shown = err.to_string();
        assert!(shown.contains("c.yaml:4:"), "{shown}");
        assert!(shown.contains("spool_dri"), "{shown}");
    }

    #[test]
    fn rejects_relative_state_dir_naming_its_line() {
        let text = "spool_dir: /tmp/s\nstate_dir: var/lib\nlog_dir: /tmp/l\n";
        let err = DaemonConfig::parse("c.yaml", text).expect_err("relative path must fail");
        let shown = err.to_string();
        assert!(shown.contains("c.yaml:2:"), "{shown}");
        assert!(shown.contains("absolute"), "{shown}");
    }

    #[test]
    fn executor_is_local_unless_the_file_says_slurm() {
        let config = DaemonConfig::parse("c.yaml", GOOD).expect("valid");
        assert!(config.executor.is_local());
        // Left out when printed, so `check-config` shows a local config as it always did.
        let printed = serde_yaml::to_string(&config).expect("yaml");
        assert!(!printed.contains("executor"), "{printed}");
        let text = format!(
            "{GOOD}executor:\n  kind: slurm\n  partition: gpu\n  gres: \"gpu:1\"\n  extra_args: [--qos=video]\n  gpu_types:\n    - {{ name: l4, memory_gb: 24 }}\n"
        );
        let config = DaemonConfig::parse("c.yaml", &text).expect("valid");
        let ExecutorConfig::Slurm(slurm) = &config.executor else {
            panic!("slurm executor expected: {:?}", config.executor);
        };
        assert_eq!(slurm.partition.as_deref(), Some("gpu"));
        assert_eq!(slurm.poll_secs, 10);
        assert_eq!(slurm.extra_args, vec!["--qos=video".to_string()]);
        assert_eq!(slurm.gpu_types[0].name, "l4");
    }

    #[test]
    fn executor_mistakes_are_refused_at_their_line() {
        let typo = format!("{GOOD}executor:\n  kind: slurm\n  partiton: gpu\n");
        let err = DaemonConfig::parse("c.yaml", &typo)
            .unwrap_err()
            .to_string();
        assert!(err.contains("partiton") && err.contains("c.yaml:"), "{err}");
        let kind = format!("{GOOD}executor:\n  kind: kubernetes\n");
        let err = DaemonConfig::parse("c.yaml", &kind)
            .unwrap_err()
            .to_string();
        assert!(err.contains("kubernetes"), "{err}");
        let zero = format!("{GOOD}executor:\n  kind: slurm\n  poll_secs: 0\n");
        let err = DaemonConfig::parse("c.yaml", &zero)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("poll_secs") && err.contains("c.yaml:4"),
            "{err}"
        );
    }

    #[test]
    fn engines_are_read_with_their_defaults() {
        let text = "spool_dir: /s\nstate_dir: /st\nlog_dir: /l\nengines:\n  numpy-demo:\n    command: [python3, /usr/share/reelspool/engines/example_engine.py]\n    profile: builtin-tiny\n";
        let config = DaemonConfig::parse("c.yaml", text).expect("valid config");
        let engine = &config.engines["numpy-demo"];
        assert_eq!(engine.command[0], "python3");
        assert_eq!(
            engine.heartbeat_timeout_secs,
            render::engine::external::DEFAULT_HEARTBEAT_TIMEOUT_SECS
        );
    }

    #[test]
    fn engine_with_an_empty_command_is_refused_at_its_line() {
        let text =
            "spool_dir: /s\nstate_dir: /st\nlog_dir: /l\nengines:\n  broken:\n    command: []\n";
        let err = DaemonConfig::parse("c.yaml", text).unwrap_err().to_string();
        assert!(
            err.contains("engine `broken`") && err.contains("c.yaml:5"),
            "{err}"
        );
    }
}
