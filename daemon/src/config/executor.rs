//! The `executor:` section: where workers run (see `crate::executor` for what each kind does).

use serde::{Deserialize, Serialize};

/// The `executor:` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ExecutorConfig {
    /// Workers are child processes of the daemon on the GPUs of `gpu_pool:`.
    #[default]
    Local,
    /// Every job is one Slurm batch job.
    Slurm(SlurmConfig),
}

impl ExecutorConfig {
    pub fn is_local(&self) -> bool {
        matches!(self, ExecutorConfig::Local)
    }
}

/// `executor: { kind: slurm, ... }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    /// `--partition`; Slurm's default partition when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// `--account`; the user's default account when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// `--gres` of every job, `gpu:1` by default. When `gpu_types` is set and this names no
    /// type, the type picked from the job's memory estimate is put in (`gpu:a100:1`).
    #[serde(default = "default_gres")]
    pub gres: String,
    /// Ask with `--gpus=[TYPE:]N` instead of `--gres` (for sites that count GPUs per job):
    /// the number of GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// The GPU types of the cluster's nodes, with their memory; a job goes to the smallest
    /// type its memory estimate fits (or, where every fitting type names a node `feature`, to
    /// any of them through `--constraint`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_types: Vec<SlurmGpuType>,
    /// Passed to `sbatch` as they are, before the script (e.g. `["--qos=video"]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
    /// How often each submitted job's state is asked of Slurm.
    #[serde(default = "default_poll_secs")]
    pub poll_secs: u64,
    /// How many jobs the daemon keeps submitted (pending or running) at once.
    #[serde(default = "default_max_jobs")]
    pub max_jobs: u32,
    /// `--time` is the estimated render time times this, plus 10 minutes.
    #[serde(default = "default_time_margin")]
    pub time_margin: f64,
    /// How long the start-up probe job may wait for a node before the daemon goes on without
    /// its answer (it warns). A probe that runs and cannot see the directories stops the start.
    #[serde(default = "default_probe_timeout_secs")]
    pub probe_timeout_secs: u64,
}

/// One GPU type of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmGpuType {
    /// The type as `gres.conf` names it (`Type=a100`).
    pub name: String,
    /// Its memory in GB as vendors count it (GiB), like `gpu_pool` cards.
    pub memory_gb: f64,
    /// A node feature (`Features=` in slurm.conf) that nodes with this type carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
}

fn default_gres() -> String {
    "gpu:1".to_string()
}
fn default_poll_secs() -> u64 {
    10
}
fn default_max_jobs() -> u32 {
    64
}
fn default_time_margin() -> f64 {
    2.0
}
fn default_probe_timeout_secs() -> u64 {
    120
}

impl SlurmConfig {
    /// What is wrong with the settings, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.poll_secs == 0 {
            return Some("`executor.poll_secs` must be at least 1".into());
        }
        if self.max_jobs == 0 {
            return Some("`executor.max_jobs` must be at least 1".into());
        }
        if !(self.time_margin.is_finite() && self.time_margin >= 1.0) {
            return Some("`executor.time_margin` must be a number of at least 1".into());
        }
        if self.gpus == Some(0) {
            return Some("`executor.gpus` must be at least 1".into());
        }
        if !self.gres.starts_with("gpu") {
            return Some(format!(
                "`executor.gres` must ask for GPUs (`gpu:1` or `gpu:TYPE:1`), got `{}`",
                self.gres
            ));
        }
        for kind in &self.gpu_types {
            if kind.name.is_empty() || kind.name.contains([':', ',', ' ']) {
                return Some(format!(
                    "`executor.gpu_types`: `{}` is not a gres type name",
                    kind.name
                ));
            }
            if !(kind.memory_gb.is_finite() && kind.memory_gb > 0.0) {
                return Some(format!(
                    "`executor.gpu_types`: `{}` needs a memory_gb above 0",
                    kind.name
                ));
            }
        }
        None
    }
}
