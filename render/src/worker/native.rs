//! The native engines behind the clip loop's seam: a Burn model in this process (the tiny
//! model, a checkpoint of it, or a Live Avatar release), bound to one job.
//!
//! The engine's carry ([`EngineCarry`]) is held here between clips; for Live Avatar it is a
//! token and the state itself stays on the device inside the engine.

use std::path::Path;
use std::time::Instant;

use tracing::info;

use super::renderer::{ClipOutput, Renderer};
use super::report::Failure;
use crate::engine::{
    self, ClipIndex, ClipLatents, Conditioning, Engine, EngineCarry, EngineSettings, ModelCache,
};
use crate::protocol::FailureKind;
use crate::RenderError;

pub(super) struct NativeRenderer {
    engine: Box<dyn Engine>,
    /// What the next clip continues from; `None` until the job starts or resumes.
    carry: Option<EngineCarry>,
    carry_bytes: u64,
    model_loaded: bool,
}

fn engine_failure(err: RenderError) -> Failure {
    Failure::new(FailureKind::Engine, err.to_string())
}

impl NativeRenderer {
    /// Binds the model `settings` name to the job, from `models` when a warm worker holds it
    /// already, else loaded now.
    pub(super) fn load(
        models: &mut ModelCache,
        settings: &EngineSettings,
        conditioning: Conditioning,
        model_cache_dir: &Path,
    ) -> Result<NativeRenderer, Failure> {
        let load_started = Instant::now();
        let (engine, model_loaded) = models
            .engine(settings, conditioning, model_cache_dir)
            .map_err(engine_failure)?;
        if model_loaded {
            info!(model = %settings.model, secs = load_started.elapsed().as_secs_f64(), "model loaded");
        } else {
            info!(model = %settings.model, "model kept loaded from the previous job; nothing to load");
        }
        if std::env::var("REELSPOOL_OFFLOAD").is_ok_and(|value| value == "1") {
            // The built-in model is small enough to stay resident; offload only changes where
            // a real model's weights live.
            info!("lease asks for weight offload; the native engine keeps its weights resident");
        }
        Ok(NativeRenderer {
            engine,
            carry: None,
            carry_bytes: engine::carry_bytes(settings).map_err(engine_failure)?,
            model_loaded,
        })
    }

    /// The engine and the carry the next clip continues from.
    fn engine_and_carry(&mut self) -> Result<(&mut dyn Engine, &EngineCarry), Failure> {
        match &self.carry {
            Some(carry) => Ok((self.engine.as_mut(), carry)),
            None => Err(Failure::new(
                FailureKind::Engine,
                "the engine has no carry: the job neither started nor resumed",
            )),
        }
    }
}

impl Renderer for NativeRenderer {
    fn model_loaded(&self) -> Option<bool> {
        Some(self.model_loaded)
    }

    fn frames_per_clip(&self) -> u32 {
        self.engine.frames_per_clip()
    }

    fn first_clip_shortfall(&self) -> u32 {
        self.engine.first_clip_shortfall()
    }

    fn audio_video_frames(&self) -> Option<u64> {
        self.engine.audio_video_frames()
    }

    fn decodes_online(&self) -> bool {
        self.engine.decodes_online()
    }

    fn carry_bytes(&self) -> Option<u64> {
        Some(self.carry_bytes)
    }

    fn start_fresh(&mut self) -> Result<(), Failure> {
        self.carry = Some(self.engine.initial_carry().map_err(engine_failure)?);
        Ok(())
    }

    fn resume(&mut self, carry: &[u8], _next_clip: u32) -> Result<Option<String>, Failure> {
        match self.engine.carry_from_bytes(carry) {
            Ok(carry) => {
                self.carry = Some(carry);
                Ok(None)
            }
            Err(
                refused @ (RenderError::CarryMismatch { .. } | RenderError::CarryFormat { .. }),
            ) => Ok(Some(refused.to_string())),
            Err(other) => Err(engine_failure(other)),
        }
    }

    fn render_clip(&mut self, index: u32) -> Result<ClipOutput, Failure> {
        let mode = std::env::var(engine::live::MEMORY_MODE_ENV).unwrap_or_default();
        let mode = mode.split(':').next().unwrap_or_default();
        if !mode.is_empty() && super::crash_point::fires(&format!("oom_{mode}"), index) {
            return Err(Failure::new(
                FailureKind::OutOfMemory,
                format!("out of memory in {mode} mode (simulated by the test hook)"),
            ));
        }
        let (engine, carry) = self.engine_and_carry()?;
        let (latents, next) = engine
            .render_clip(ClipIndex(index), carry)
            .map_err(engine_failure)?;
        self.carry = Some(next);
        Ok(ClipOutput::Latents(latents))
    }

    fn decode(&mut self, latents: &ClipLatents) -> Result<Vec<Vec<u8>>, Failure> {
        Ok(self.engine.decode(latents).map_err(engine_failure)?.rgb)
    }

    fn carry_to_bytes(&mut self) -> Result<Vec<u8>, Failure> {
        let (engine, carry) = self.engine_and_carry()?;
        engine.carry_to_bytes(carry).map_err(engine_failure)
    }

    fn write_carry(&mut self, out: &mut std::fs::File) -> std::io::Result<u64> {
        let (engine, carry) = self
            .engine_and_carry()
            .map_err(|failure| std::io::Error::other(failure.message))?;
        engine.write_carry(carry, out).map_err(|err| match err {
            RenderError::CarryWrite { source } => source,
            other => std::io::Error::other(other.to_string()),
        })
    }
}
