//! Where workers run: on this machine (`executor: { kind: local }`, the default), or as batch
//! jobs of a Slurm cluster (`kind: slurm`).
//!
//! With Slurm the daemon keeps everything but the placement: intake, the queue, job state,
//! checkpoints, the final mux (done by the worker in the job folder) and notices. Slurm picks
//! the node and the GPU; the scheduler's own pool then only bounds how many jobs are handed to
//! Slurm at once (see [`pool_for`]).

pub mod slurm;

use gpu_pool::config::{PoolSource, SimulatedGpu};
use serde::{Deserialize, Serialize};

use crate::config::DaemonConfig;

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

/// The pool the scheduler places jobs on. Locally that is `gpu_pool:`. Under Slurm it is
/// `max_jobs` stand-in slots (Slurm decides the real card): CPU-like slots when no GPU types
/// are known, else simulated cards as large as the largest type, so intake still refuses a
/// job that fits no card of the cluster.
pub fn pool_for(config: &DaemonConfig) -> std::borrow::Cow<'_, DaemonConfig> {
    let ExecutorConfig::Slurm(slurm) = &config.executor else {
        return std::borrow::Cow::Borrowed(config);
    };
    let mut adjusted = config.clone();
    let largest = slurm
        .gpu_types
        .iter()
        .map(|kind| kind.memory_gb)
        .fold(None, |acc: Option<f64>, gb| {
            Some(acc.map_or(gb, |a| a.max(gb)))
        });
    adjusted.gpu_pool.source = match largest {
        None => PoolSource::Cpu {
            slots: slurm.max_jobs,
        },
        Some(memory_gb) => PoolSource::Simulated {
            gpus: (0..slurm.max_jobs)
                .map(|n| SimulatedGpu {
                    name: "slurm".into(),
                    memory_gb,
                    uuid: Some(format!("slurm-slot-{n}")),
                })
                .collect(),
        },
    };
    std::borrow::Cow::Owned(adjusted)
}

/// The start-up check of the executor: under Slurm, a probe job must see the spool and state
/// directories from a node. An error stops the start with a message that says what to fix.
pub async fn check_at_start(config: &DaemonConfig) -> Result<(), slurm::SlurmError> {
    let ExecutorConfig::Slurm(slurm) = &config.executor else {
        return Ok(());
    };
    tracing::info!("checking that Slurm nodes see the spool and state directories (probe job)");
    if slurm::probe(slurm, &config.spool_dir, &config.state_dir).await? {
        tracing::info!("a Slurm node sees the spool and state directories");
    } else {
        tracing::warn!(
            timeout_secs = slurm.probe_timeout_secs,
            "the Slurm probe job got no node in time; starting anyway, jobs wait in Slurm's queue"
        );
    }
    Ok(())
}

/// The size of a job as Slurm is asked for it: memory and running time from the job's plan
/// and memory profile. A job whose plan or profile cannot be read is submitted with the
/// smallest request (and a warning), which Slurm's limits then bound.
pub fn needs_of(
    config: &DaemonConfig,
    dir: &jobs::state::JobDir,
    offload: bool,
) -> slurm::JobNeeds {
    let plan = jobs::index::read_plan(dir).or_else(|| {
        dir.load_spec()
            .ok()
            .map(|spec| crate::placement::Placement::plan_of(&spec))
    });
    let profiles_dir = config.templates_dir().join("profiles");
    let estimate = plan.as_ref().and_then(|plan| {
        let profiles = gpu_pool::load_profiles(&profiles_dir).ok()?;
        let request = gpu_pool::EstimateRequest {
            width: plan.width,
            height: plan.height,
            frames: plan.frames,
            offload: if offload {
                gpu_pool::OffloadChoice::On
            } else {
                gpu_pool::OffloadChoice::Off
            },
        };
        profiles.estimate(&plan.profile, &request).ok()
    });
    match (plan, estimate) {
        (Some(plan), Some(estimate)) => slurm::JobNeeds {
            vram_bytes: estimate.vram_bytes,
            host_bytes: estimate.host_bytes,
            render_secs: estimate.secs_per_frame
                * f64::from(plan.frames)
                * f64::from(plan.clips.max(1)),
        },
        _ => {
            tracing::warn!(job = %dir.root().display(), "no memory estimate for the job; asking Slurm for the smallest request");
            slurm::JobNeeds {
                vram_bytes: 0,
                host_bytes: 0,
                render_secs: 0.0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "spool_dir: /s\nstate_dir: /st\nlog_dir: /l\ngpu_pool: { kind: cpu, slots: 2 }\n";

    fn parse(text: &str) -> DaemonConfig {
        DaemonConfig::parse("c.yaml", text).expect("valid config")
    }

    #[test]
    fn locally_the_pool_is_gpu_pool_as_written() {
        let config = parse(BASE);
        assert_eq!(pool_for(&config).gpu_pool, config.gpu_pool);
    }

    #[test]
    fn under_slurm_the_pool_is_max_jobs_slots_as_big_as_the_largest_gpu_type() {
        let plain = parse(&format!("{BASE}executor: {{ kind: slurm, max_jobs: 3 }}\n"));
        assert_eq!(
            pool_for(&plain).gpu_pool.source,
            PoolSource::Cpu { slots: 3 }
        );
        let typed = parse(&format!(
            "{BASE}executor: {{ kind: slurm, max_jobs: 2, gpu_types: [{{ name: l4, memory_gb: 24 }}, {{ name: a100, memory_gb: 80 }}] }}\n"
        ));
        let PoolSource::Simulated { gpus } = pool_for(&typed).gpu_pool.source.clone() else {
            panic!("simulated slots expected");
        };
        assert_eq!(gpus.len(), 2);
        assert!(gpus.iter().all(|gpu| gpu.memory_gb == 80.0), "{gpus:?}");
    }
}
