//! Flow-matching Euler sampler with a time shift, reproducing diffusers'
//! `FlowMatchEulerDiscreteScheduler(shift=s)` + `set_timesteps(n)` step for step,
//! including where it rounds to f32: the shift is applied twice (once on the 1000
//! training sigmas in f32, once on the inference sigmas in f64 before rounding).

use burn::prelude::*;

/// Training timesteps of every Wan model.
pub const TRAIN_TIMESTEPS: usize = 1000;

/// The schedule of one sampling run.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowSchedule {
    /// Model timesteps, one per step (`sigma * 1000` in f32).
    pub timesteps: Vec<f32>,
    /// Noise levels, one per step plus the final 0.
    pub sigmas: Vec<f32>,
}

fn shift_f32(shift: f32, s: f32) -> f32 {
    shift * s / (1.0 + (shift - 1.0) * s)
}

fn shift_f64(shift: f64, s: f64) -> f64 {
    shift * s / (1.0 + (shift - 1.0) * s)
}

/// numpy's `linspace(start, stop, n)` in f64.
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (n - 1) as f64;
            (0..n)
                .map(|i| {
                    if i == n - 1 {
                        stop
                    } else {
                        i as f64 * step + start
                    }
                })
                .collect()
        }
    }
}

impl FlowSchedule {
    /// `steps` Euler steps with time shift `shift` (Live Avatar: 4 steps, shift 3).
    pub fn new(steps: usize, shift: f64) -> Self {
        let n = TRAIN_TIMESTEPS as f32;
        // The scheduler's constructor: training sigmas t/1000 for t = 1000 and 1,
        // shifted in f32; only the two ends are used by `set_timesteps`.
        // t = 1000 gives sigma 1000/1000 = 1 exactly.
        let sigma_max = shift_f32(shift as f32, 1.0);
        let sigma_min = shift_f32(shift as f32, 1.0 / n);
        let sigmas: Vec<f32> = linspace(
            f64::from(sigma_max) * TRAIN_TIMESTEPS as f64,
            f64::from(sigma_min) * TRAIN_TIMESTEPS as f64,
            steps,
        )
        .into_iter()
        .map(|t| shift_f64(shift, t / TRAIN_TIMESTEPS as f64) as f32)
        .collect();
        let timesteps = sigmas.iter().map(|s| s * n).collect();
        let mut sigmas = sigmas;
        sigmas.push(0.0);
        Self { timesteps, sigmas }
    }

    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    /// One Euler step from step `i` to `i + 1`: `x + (σ_{i+1} − σ_i) · v`.
    pub fn step<B: Backend, const D: usize>(
        &self,
        i: usize,
        x: Tensor<B, D>,
        velocity: Tensor<B, D>,
    ) -> Tensor<B, D> {
        let dt = self.sigmas[i + 1] - self.sigmas[i];
        x + velocity * dt
    }
}
