//! Finding the devices jobs can run on.
//!
//! All three kinds of pool end up as the same [`GpuInfo`] list, so everything after discovery
//! (leases, placement, the status command) never asks which kind it is looking at, except to
//! set a worker's environment.

mod nvml;

use serde::{Deserialize, Serialize};

use crate::config::{PoolConfig, PoolSource, SimulatedGpu};
use crate::PoolError;

/// The memory a CPU slot claims to have: 1 TiB.
///
/// A CPU slot runs the model from host RAM, which this crate does not model per slot; giving
/// it a size larger than any estimate means placement never refuses a job for a CPU pool. The
/// CPU pool is meant for `builtin:tiny`, the demo and the tests.
pub const CPU_SLOT_NOMINAL_BYTES: u64 = 1 << 40;

/// Bytes in one GiB, the unit GPU memory is quoted in.
pub const GIB: u64 = 1 << 30;

/// Which kind of device a [`GpuInfo`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuKind {
    /// A CPU job slot (no GPU).
    Cpu,
    /// A card from the `simulated` config, which does not exist.
    Simulated,
    /// A real NVIDIA card reported by NVML.
    Nvml,
}

/// One device as discovery saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// The NVML index (PCI bus order), or the position in the config for other kinds.
    pub index: u32,
    /// The identity leases and `CUDA_VISIBLE_DEVICES` use: it survives reboots, unlike the index.
    pub uuid: String,
    /// The model name (`NVIDIA A100-SXM4-80GB`).
    pub name: String,
    /// `domain:bus:device.function`, as `nvidia-smi` prints it; `None` for CPU slots.
    pub pci_bus_id: Option<String>,
    /// Memory on the card.
    pub memory_total_bytes: u64,
    /// Memory no process holds right now.
    pub memory_free_bytes: u64,
    /// GPU busy percentage over the driver's last sample period, where the card reports it.
    pub utilization_percent: Option<u32>,
    /// Die temperature, where the card reports it.
    pub temperature_c: Option<u32>,
    /// `false` when the card should get no new jobs (uncorrectable ECC errors, pages waiting
    /// to be retired, fallen off the bus, unreadable).
    pub healthy: bool,
    /// Why the card is unhealthy, or a warning worth logging on a healthy card.
    pub health_note: Option<String>,
    /// Compute processes on the card as `(pid, bytes used)`; the daemon's own workers appear
    /// here too, so the daemon subtracts the pids it started (see [`GpuInfo::external_use_bytes`]).
    pub foreign_processes: Vec<(u32, u64)>,
    /// Which kind of device this is.
    pub kind: GpuKind,
}

impl GpuInfo {
    /// Bytes held by processes other than `own_pids` (the daemon's workers).
    ///
    /// Compare with [`PoolConfig::external_use_threshold_bytes`]: a card above it is in use by
    /// someone else, and the daemon should not start a job there.
    pub fn external_use_bytes(&self, own_pids: &[u32]) -> u64 {
        self.foreign_processes
            .iter()
            .filter(|(pid, _)| !own_pids.contains(pid))
            .map(|&(_, bytes)| bytes)
            .sum()
    }
}

/// Lists the devices of the configured pool.
///
/// For `kind: nvml` this loads the driver's library and asks every card; without a driver it
/// fails with [`PoolError::NvmlUnavailable`], whose message tells the operator how to proceed.
pub fn discover(cfg: &PoolConfig) -> Result<Vec<GpuInfo>, PoolError> {
    let devices = match &cfg.source {
        PoolSource::Cpu { slots } => cpu_slots(*slots),
        PoolSource::Simulated { gpus } => simulated(gpus),
        PoolSource::Nvml {
            include, exclude, ..
        } => nvml::discover(include.as_deref(), exclude)?,
    };
    tracing::debug!(count = devices.len(), "discovered devices");
    Ok(devices)
}

fn cpu_slots(slots: u32) -> Vec<GpuInfo> {
    (0..slots)
        .map(|index| GpuInfo {
            index,
            uuid: format!("cpu-{index}"),
            name: format!("CPU slot {index}"),
            pci_bus_id: None,
            memory_total_bytes: CPU_SLOT_NOMINAL_BYTES,
            memory_free_bytes: CPU_SLOT_NOMINAL_BYTES,
            utilization_percent: None,
            temperature_c: None,
            healthy: true,
            health_note: None,
            foreign_processes: Vec::new(),
            kind: GpuKind::Cpu,
        })
        .collect()
}

/// The UUID a simulated card gets when the config names none.
///
/// Built only from the config (position, name, size) so that a restart yields the same UUID
/// and a persisted lease still names the same card.
pub fn simulated_uuid(index: usize, gpu: &SimulatedGpu) -> String {
    let slug: String = gpu
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("GPU-sim-{index}-{slug}-{}g", gpu.memory_gb)
}

fn simulated(gpus: &[SimulatedGpu]) -> Vec<GpuInfo> {
    gpus.iter()
        .enumerate()
        .map(|(index, gpu)| {
            let bytes = (gpu.memory_gb * GIB as f64).round() as u64;
            let index_u32 = u32::try_from(index).unwrap_or(u32::MAX);
            GpuInfo {
                index: index_u32,
                uuid: gpu
                    .uuid
                    .clone()
                    .unwrap_or_else(|| simulated_uuid(index, gpu)),
                name: gpu.name.clone(),
                pci_bus_id: Some(format!("00000000:{:02X}:00.0", index + 1)),
                memory_total_bytes: bytes,
                memory_free_bytes: bytes,
                utilization_percent: Some(0),
                temperature_c: None,
                healthy: true,
                health_note: None,
                foreign_processes: Vec::new(),
                kind: GpuKind::Simulated,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(name: &str, memory_gb: f64) -> SimulatedGpu {
        SimulatedGpu {
            name: name.into(),
            memory_gb,
            uuid: None,
        }
    }

    #[test]
    fn cpu_slots_are_named_cpu_n_and_claim_the_nominal_size() {
        let config = PoolConfig {
            source: PoolSource::Cpu { slots: 2 },
            failure_drain_threshold: 3,
            host_memory_gb: None,
        };
        let devices = discover(&config).expect("cpu discovery cannot fail");
        let uuids: Vec<&str> = devices.iter().map(|d| d.uuid.as_str()).collect();
        assert_eq!(uuids, ["cpu-0", "cpu-1"]);
        assert!(devices
            .iter()
            .all(|d| d.kind == GpuKind::Cpu && d.memory_total_bytes == 1 << 40));
    }

    #[test]
    fn simulated_memory_gb_counts_gib() {
        let devices = simulated(&[sim("RTX 4090", 24.0)]);
        assert_eq!(devices[0].memory_total_bytes, 24 * 1024 * 1024 * 1024);
        assert_eq!(devices[0].kind, GpuKind::Simulated);
    }

    #[test]
    fn simulated_default_uuid_is_stable_and_unique_per_position() {
        let gpus = [sim("RTX 4090", 24.0), sim("RTX 4090", 24.0)];
        let first = simulated(&gpus);
        let again = simulated(&gpus);
        assert_eq!(first[0].uuid, "GPU-sim-0-rtx-4090-24g");
        assert_eq!(first[0].uuid, again[0].uuid);
        assert_ne!(first[0].uuid, first[1].uuid);
    }

    #[test]
    fn configured_uuid_wins_over_the_default() {
        let mut gpu = sim("A100", 80.0);
        gpu.uuid = Some("GPU-mine".into());
        assert_eq!(simulated(&[gpu])[0].uuid, "GPU-mine");
    }

    #[test]
    fn external_use_leaves_out_the_daemons_own_workers() {
        let mut info = simulated(&[sim("A100", 80.0)]).remove(0);
        info.foreign_processes = vec![(100, 5 * GIB), (200, GIB)];
        assert_eq!(info.external_use_bytes(&[100]), GIB);
        assert_eq!(info.external_use_bytes(&[]), 6 * GIB);
    }
}
