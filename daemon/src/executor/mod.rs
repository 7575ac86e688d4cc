//! Where workers run: on this machine (`executor: { kind: local }`, the default), or as batch
//! jobs of a Slurm cluster (`kind: slurm`).
//!
//! With Slurm the daemon keeps everything but the placement: intake, the queue, job state,
//! checkpoints, the final mux (done by the worker in the job folder) and notices. Slurm picks
//! the node and the GPU; the scheduler's own pool then only bounds how many jobs are handed to
//! Slurm at once (see [`pool_for`]).

pub mod slurm;

use gpu_pool::config::{PoolSource, SimulatedGpu};

use crate::config::{DaemonConfig, ExecutorConfig};

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
