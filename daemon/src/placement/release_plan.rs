//! Memory plans of Live Avatar release jobs, computed by the engine's own accounting
//! (`wan::memory`) instead of a profile file: the mode (resident, hybrid, streamed) and the
//! precision a job runs in on the pool's cards, with its device and host memory.

use std::path::Path;

use jobs::index::ReleaseShape;
use jobs::spec::{MemoryModeSetting, PrecisionSetting};
use serde::{Deserialize, Serialize};
use wan::memory::{Budget, JobShape, MemoryMode, MemoryPlan, ModeChoice, ModelSizes};
use wan::memory::{PrecisionChoice, Refusal};

const GIB: f64 = (1u64 << 30) as f64;

/// Device memory kept out of every plan for the CUDA context and the driver (1 GiB, as the
/// `memory-plan` example assumes).
pub const CONTEXT_RESERVE_BYTES: u64 = 1 << 30;

/// The environment variable that tells a worker the mode to load a release in
/// (`resident`, `hybrid:<blocks>`, `streamed`).
pub const MEMORY_MODE_ENV: &str = "REELSPOOL_MEMORY_MODE";
/// The environment variable that tells a worker the weight precision (`bf16`, `fp8`).
pub const PRECISION_ENV: &str = "REELSPOOL_PRECISION";

/// One plan as people see it and workers are told it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMemory {
    /// `resident`, `hybrid` or `streamed`.
    pub mode: String,
    /// DiT blocks kept on the card (all for resident, none for streamed).
    pub resident_blocks: usize,
    /// DiT blocks of the model.
    pub blocks: usize,
    /// `bf16` or `fp8`.
    pub precision: String,
    /// Card memory the job needs: the larger of the clip and `prepare` peaks, plus the
    /// context reserve.
    pub device_bytes: u64,
    /// Host memory the job needs (weights and carry kept off the card).
    pub host_bytes: u64,
}

impl PlannedMemory {
    fn of(plan: &MemoryPlan, blocks: usize) -> PlannedMemory {
        PlannedMemory {
            mode: plan.mode.name().to_string(),
            resident_blocks: plan.mode.resident_blocks(blocks),
            blocks,
            precision: plan.precision.to_string(),
            device_bytes: plan
                .device_peak()
                .max(plan.prepare_peak())
                .saturating_add(CONTEXT_RESERVE_BYTES),
            host_bytes: plan.host_bytes(),
        }
    }

    /// `resident`, `hybrid (5/40 blocks resident)` or `streamed`.
    pub fn mode_label(&self) -> String {
        if self.mode == "hybrid" {
            format!(
                "hybrid ({}/{} blocks resident)",
                self.resident_blocks, self.blocks
            )
        } else {
            self.mode.clone()
        }
    }

    /// One line for `status`.
    pub fn summary(&self) -> String {
        format!(
            "{} {}, {:.1} GiB on the GPU, {:.1} GiB of host memory",
            self.mode_label(),
            self.precision,
            self.device_bytes as f64 / GIB,
            self.host_bytes as f64 / GIB
        )
    }

    /// The value of [`MEMORY_MODE_ENV`] for the worker.
    pub fn mode_env(&self) -> String {
        if self.mode == "hybrid" {
            format!("hybrid:{}", self.resident_blocks)
        } else {
            self.mode.clone()
        }
    }

    /// What the worker is told, as environment variables.
    pub fn worker_env(&self) -> [(String, String); 2] {
        [
            (MEMORY_MODE_ENV.to_string(), self.mode_env()),
            (PRECISION_ENV.to_string(), self.precision.clone()),
        ]
    }
}

/// A job's plan on the pool's largest card, and the mode an out-of-memory retry moves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasePlans {
    pub primary: PlannedMemory,
    /// `streamed` at the same precision, for a job whose mode is `auto` and planned faster.
    pub fallback: Option<PlannedMemory>,
}

/// Why a release job has no plan.
#[derive(Debug)]
pub enum NoPlan {
    /// The release's configs cannot be read, or the settings are invalid for it: left to the
    /// checks that name the problem (intake's settings and release checks).
    Unreadable(String),
    /// It fits no card of the pool in any allowed mode.
    DoesNotFit(Box<Refusal>),
}

fn mode_choice(setting: MemoryModeSetting) -> ModeChoice {
    match setting {
        MemoryModeSetting::Auto => ModeChoice::Auto,
        MemoryModeSetting::Resident => ModeChoice::Resident,
        MemoryModeSetting::Hybrid => ModeChoice::Hybrid,
        MemoryModeSetting::Streamed => ModeChoice::Streamed,
    }
}

fn precision_choice(setting: PrecisionSetting) -> PrecisionChoice {
    match setting {
        PrecisionSetting::Auto => PrecisionChoice::Auto,
        PrecisionSetting::Bf16 => PrecisionChoice::Bf16,
        PrecisionSetting::Fp8 => PrecisionChoice::Fp8,
    }
}

/// The plans of a `width`×`height`, `frames`-per-clip job of `shape` on a card of
/// `card_bytes` and a host with `host_bytes` (`None`: host memory is not counted).
pub fn plan(
    shape: &ReleaseShape,
    width: u32,
    height: u32,
    frames: u32,
    card_bytes: u64,
    host_bytes: Option<u64>,
) -> Result<ReleasePlans, NoPlan> {
    let sizes =
        ModelSizes::from_dir(&shape.dir).map_err(|err| NoPlan::Unreadable(err.to_string()))?;
    let blocks = sizes.config.s2v.num_layers;
    let job = JobShape {
        width: width as usize,
        height: height as usize,
        infer_frames: frames as usize,
        sample_steps: shape.sample_steps as usize,
        audio_seconds: shape.audio_seconds,
    };
    let budget = Budget {
        device_free: card_bytes.saturating_sub(CONTEXT_RESERVE_BYTES),
        host_free: host_bytes.unwrap_or(u64::MAX / 4),
    };
    let chosen = wan::memory::choose(
        &sizes,
        &job,
        budget,
        mode_choice(shape.memory_mode),
        precision_choice(shape.precision),
    )
    .map_err(|refusal| match refusal.closest {
        None => NoPlan::Unreadable(
            refusal
                .settings_error
                .clone()
                .unwrap_or_else(|| refusal.to_string()),
        ),
        Some(_) => NoPlan::DoesNotFit(refusal),
    })?;
    let fallback = (shape.memory_mode == MemoryModeSetting::Auto
        && chosen.mode != MemoryMode::Streamed)
        .then(|| wan::memory::plan(&sizes, &job, MemoryMode::Streamed, chosen.precision).ok())
        .flatten()
        .map(|plan| PlannedMemory::of(&plan, blocks));
    Ok(ReleasePlans {
        primary: PlannedMemory::of(&chosen, blocks),
        fallback,
    })
}

/// The release shape of a job file, for a Live Avatar release on the native engine.
pub fn shape_of(spec: &jobs::JobSpec, clips: u32) -> Option<ReleaseShape> {
    let jobs::spec::ModelRef::Release { dir } = &spec.engine.model_ref else {
        return None;
    };
    let frames = f64::from(clips.max(1)) * f64::from(spec.render.infer_frames);
    Some(ReleaseShape {
        dir: dir.clone(),
        sample_steps: spec.render.sample_steps,
        audio_seconds: frames / f64::from(spec.render.fps.max(1)),
        memory_mode: spec.render.memory_mode,
        precision: spec.render.precision,
    })
}

/// The release check of `dir` (headers only), as one message naming every problem.
pub fn check_release(dir: &Path) -> Result<(), String> {
    let report = wan::check::check_release(dir);
    if report.is_ok() {
        Ok(())
    } else {
        Err(report.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(dir: &Path, mode: MemoryModeSetting) -> ReleaseShape {
        ReleaseShape {
            dir: dir.to_path_buf(),
            sample_steps: 1,
            audio_seconds: 2.0,
            memory_mode: mode,
            precision: PrecisionSetting::Auto,
        }
    }

    #[test]
    fn auto_plans_resident_with_a_streamed_fallback_and_a_pinned_mode_has_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        wan::release::write_tiny_release(dir.path(), 7).expect("tiny release");
        let auto = plan(
            &shape(dir.path(), MemoryModeSetting::Auto),
            64,
            64,
            16,
            1 << 40,
            None,
        )
        .expect("fits a big card");
        assert_eq!(auto.primary.mode_env(), "resident");
        let fallback = auto.fallback.expect("a streamed fallback");
        assert_eq!(fallback.mode_env(), "streamed");
        assert_eq!(fallback.resident_blocks, 0);
        for planned in [&auto.primary, &fallback] {
            assert_eq!(
                render::engine::live::parse_memory_mode(&planned.mode_env()).map(|m| m.name()),
                Some(planned.mode.as_str())
            );
        }
        let pinned = plan(
            &shape(dir.path(), MemoryModeSetting::Streamed),
            64,
            64,
            16,
            1 << 40,
            None,
        )
        .expect("fits");
        assert_eq!(pinned.primary.mode, "streamed");
        assert!(pinned.fallback.is_none());
        let hybrid = PlannedMemory {
            mode: "hybrid".into(),
            resident_blocks: 5,
            blocks: 40,
            ..pinned.primary
        };
        assert_eq!(hybrid.mode_env(), "hybrid:5");
        assert_eq!(hybrid.mode_label(), "hybrid (5/40 blocks resident)");
    }
}
