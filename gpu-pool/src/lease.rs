//! Leases: which job holds which card, and what a worker sees of it.
//!
//! A worker is told its card only through the environment: it sees exactly one device, named
//! by UUID, so the same binary runs unchanged whatever card it was given, and a bug in a
//! worker cannot touch another job's card.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::discover::{GpuInfo, GpuKind};
use crate::{atomic, PoolError};

/// One card lent to one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuLease {
    /// The card's UUID (`cpu-<n>` for a CPU slot).
    pub uuid: String,
    /// The card's index at discovery time, only for people: it can change across reboots.
    pub index: u32,
    /// What kind of device was lent.
    pub kind: GpuKind,
}

impl GpuLease {
    /// A lease on the given device.
    pub fn for_device(device: &GpuInfo) -> GpuLease {
        GpuLease {
            uuid: device.uuid.clone(),
            index: device.index,
            kind: device.kind,
        }
    }

    /// The environment variables to set on the worker process.
    ///
    /// GPU leases name the card by UUID in `CUDA_VISIBLE_DEVICES` (CUDA inside the worker then
    /// calls it device 0) and in `NVIDIA_VISIBLE_DEVICES` (read by the NVIDIA container
    /// runtime, should the worker run in a container). `CUDA_DEVICE_ORDER=PCI_BUS_ID` makes any
    /// index the worker prints agree with `nvidia-smi`. Simulated cards get the same variables
    /// so the simulated path is the real path. A CPU slot sets `CUDA_VISIBLE_DEVICES` to the
    /// empty string, which hides every GPU: a CPU job must not grab a card by accident.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        match self.kind {
            GpuKind::Nvml | GpuKind::Simulated => vec![
                ("CUDA_VISIBLE_DEVICES".to_string(), self.uuid.clone()),
                ("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string()),
                ("NVIDIA_VISIBLE_DEVICES".to_string(), self.uuid.clone()),
            ],
            GpuKind::Cpu => vec![("CUDA_VISIBLE_DEVICES".to_string(), String::new())],
        }
    }
}

/// Which job holds which card, persisted in the daemon's state directory.
///
/// After a restart the daemon re-queues interrupted jobs with their old card as the preferred
/// one (see `QueuedJob::preferred_card`), so a resumed job goes back to its card when that card
/// is free, keeping the card's warm caches and making logs easy to follow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTable {
    /// Job id → card UUID.
    leases: BTreeMap<String, String>,
}

impl LeaseTable {
    /// Records that `job_id` holds the card `uuid`, replacing any earlier lease of that job.
    pub fn insert(&mut self, job_id: &str, uuid: &str) {
        self.leases.insert(job_id.to_string(), uuid.to_string());
    }

    /// Forgets the lease of `job_id`, returning the card it held.
    pub fn remove(&mut self, job_id: &str) -> Option<String> {
        self.leases.remove(job_id)
    }

    /// The card `job_id` holds.
    pub fn card_of(&self, job_id: &str) -> Option<&str> {
        self.leases.get(job_id).map(String::as_str)
    }

    /// The job holding card `uuid`.
    pub fn job_on(&self, uuid: &str) -> Option<&str> {
        self.leases
            .iter()
            .find(|(_, card)| card.as_str() == uuid)
            .map(|(job, _)| job.as_str())
    }

    /// All leases as `(job id, card UUID)`, in job id order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.leases.iter().map(|(j, c)| (j.as_str(), c.as_str()))
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether no job holds a card.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Writes the table as JSON, atomically (temp file, fsync, rename, fsync directory).
    pub fn save(&self, path: &Path) -> Result<(), PoolError> {
        let json = serde_json::to_vec_pretty(self).map_err(|err| PoolError::StateFile {
            path: path.to_path_buf(),
            what: "lease table",
            message: err.to_string(),
        })?;
        atomic::write_file(path, &json)
    }

    /// Reads a table written by [`LeaseTable::save`]; a missing file is an empty table.
    pub fn load(path: &Path) -> Result<LeaseTable, PoolError> {
        let Some(bytes) = atomic::read_optional(path)? else {
            return Ok(LeaseTable::default());
        };
        serde_json::from_slice(&bytes).map_err(|err| PoolError::StateFile {
            path: path.to_path_buf(),
            what: "lease table",
            message: err.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_value<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn gpu_lease_names_the_card_by_uuid() {
        let lease = GpuLease {
            uuid: "GPU-1234".into(),
            index: 3,
            kind: GpuKind::Nvml,
        };
        let env = lease.worker_env();
        assert_eq!(env_value(&env, "CUDA_VISIBLE_DEVICES"), Some("GPU-1234"));
        assert_eq!(env_value(&env, "NVIDIA_VISIBLE_DEVICES"), Some("GPU-1234"));
        assert_eq!(env_value(&env, "CUDA_DEVICE_ORDER"), Some("PCI_BUS_ID"));
    }

    #[test]
    fn cpu_lease_hides_every_gpu() {
        let lease = GpuLease {
            uuid: "cpu-0".into(),
            index: 0,
            kind: GpuKind::Cpu,
        };
        let env = lease.worker_env();
        assert_eq!(env, [("CUDA_VISIBLE_DEVICES".to_string(), String::new())]);
    }

    #[test]
    fn lease_table_survives_save_and_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("leases.json");
        let mut table = LeaseTable::default();
        table.insert("job-a", "GPU-1");
        table.insert("job-b", "GPU-2");
        table.save(&path).expect("save");
        let loaded = LeaseTable::load(&path).expect("load");
        assert_eq!(loaded.card_of("job-a"), Some("GPU-1"));
        assert_eq!(loaded.job_on("GPU-2"), Some("job-b"));
        assert_eq!(loaded, table);
    }

    #[test]
    fn missing_lease_file_is_an_empty_table() {
        let dir = tempfile::tempdir().expect("temp dir");
        let table = LeaseTable::load(&dir.path().join("none.json")).expect("no file is fine");
        assert!(table.is_empty());
    }

    #[test]
    fn corrupt_lease_file_names_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("leases.json");
        std::fs::write(&path, "{ not json").expect("write");
        let err = LeaseTable::load(&path).expect_err("corrupt");
        assert!(err.to_string().contains("leases.json"), "{err}");
    }

    #[test]
    fn releasing_a_lease_frees_the_card() {
        let mut table = LeaseTable::default();
        table.insert("job-a", "GPU-1");
        assert_eq!(table.remove("job-a").as_deref(), Some("GPU-1"));
        assert_eq!(table.job_on("GPU-1"), None);
    }
}
