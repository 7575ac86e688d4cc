//! Watching NVML cards while the daemon runs: their health, their use by processes outside
//! reelspool, and the memory our own workers hold (the observed peaks).
//!
//! Reading NVML takes tens of milliseconds per card, so it happens on a thread of its own
//! ([`PoolWatch`]) and the scheduler only picks up the latest reading on its tick. The
//! decisions made from a reading are pure functions ([`judge_card`], [`own_worker_bytes`]),
//! tested without a GPU.
//!
//! Simulated and CPU pools are not watched: their cards cannot fail or be used by anyone
//! else, and no driver reports what a process holds on them, so no peak is ever recorded for
//! jobs that ran there.

use std::sync::mpsc;
use std::time::Duration;

use gpu_pool::config::{PoolConfig, PoolSource};
use gpu_pool::GpuInfo;
use tracing::debug;

/// How often NVML cards are read. Peaks between two readings are missed, so an observed peak
/// is a lower bound of the true one; it only ever raises estimates, never lowers them.
pub const NVML_POLL: Duration = Duration::from_secs(10);

/// One reading of the whole pool, with the processes that were ours at that moment.
#[derive(Debug, Clone)]
pub struct PoolReading {
    pub devices: Result<Vec<GpuInfo>, String>,
    /// The daemon and every process below it (workers and what they started).
    pub own_pids: Vec<u32>,
}

/// A thread that reads the pool every [`NVML_POLL`]; it ends when the daemon drops this.
pub struct PoolWatch {
    readings: mpsc::Receiver<PoolReading>,
}

impl PoolWatch {
    /// Starts watching an NVML pool; `None` for pools there is nothing to watch on.
    pub fn start(config: &PoolConfig) -> Option<PoolWatch> {
        if !matches!(config.source, PoolSource::Nvml { .. }) {
            return None;
        }
        let config = config.clone();
        let (send, readings) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("gpu-watch".into())
            .spawn(move || loop {
                std::thread::sleep(NVML_POLL);
                let reading = PoolReading {
                    devices: gpu_pool::discover(&config).map_err(|err| err.to_string()),
                    own_pids: own_pids(),
                };
                if send.send(reading).is_err() {
                    debug!("GPU watch stopped");
                    return;
                }
            });
        match spawned {
            Ok(_) => Some(PoolWatch { readings }),
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the GPU watch thread; card health is read only at start");
                None
            }
        }
    }

    /// The newest reading since the last call, if any.
    pub fn latest(&self) -> Option<PoolReading> {
        self.readings.try_iter().last()
    }
}

/// Whether jobs may start on a card, and what to tell the operator about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardVerdict {
    pub usable: bool,
    pub note: Option<String>,
}

/// Judges one card from a reading: the driver must call it healthy, and processes outside
/// reelspool must hold no more than `threshold_bytes` on it (a card someone is using for
/// something else would make our job run out of memory or slow theirs down).
pub fn judge_card(device: &GpuInfo, own_pids: &[u32], threshold_bytes: Option<u64>) -> CardVerdict {
    if !device.healthy {
        return CardVerdict {
            usable: false,
            note: Some(
                device
                    .health_note
                    .clone()
                    .unwrap_or_else(|| "the driver reports the card unhealthy".into()),
            ),
        };
    }
    let external_bytes = device.external_use_bytes(own_pids);
    if let Some(threshold) = threshold_bytes.filter(|&t| external_bytes > t) {
        let mib = |bytes: u64| bytes / (1 << 20);
        let pids: Vec<String> = device
            .foreign_processes
            .iter()
            .filter(|(pid, _)| !own_pids.contains(pid))
            .map(|(pid, _)| pid.to_string())
            .collect();
        return CardVerdict {
            usable: false,
            note: Some(format!(
                "in use outside reelspool: {} MiB by pid {} (threshold {} MiB, gpu_pool.external_use_threshold_mb)",
                mib(external_bytes),
                pids.join(", "),
                mib(threshold)
            )),
        };
    }
    CardVerdict {
        usable: true,
        note: device.health_note.clone(),
    }
}

/// What our own processes hold on a card; `None` when NVML reports no byte count for them
/// (no process of ours there, or a driver that does not tell per-process memory).
pub fn own_worker_bytes(device: &GpuInfo, own_pids: &[u32]) -> Option<u64> {
    let bytes: u64 = device
        .foreign_processes
        .iter()
        .filter(|(pid, _)| own_pids.contains(pid))
        .map(|&(_, bytes)| bytes)
        .sum();
    (bytes > 0).then_some(bytes)
}

/// The daemon's pid and every pid below it.
///
/// Workers are children of the daemon, but a worker may be a wrapper that starts the real
/// program, so the whole subtree counts as ours.
pub fn own_pids() -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| parent_pid(&stat))
            {
                parents.push((pid, ppid));
            }
        }
    }
    descendants(std::process::id(), &parents)
}

/// The parent pid from the text of `/proc/<pid>/stat`. The command name in parentheses may
/// itself hold spaces and parentheses, so the fields are counted from the last `)`.
pub fn parent_pid(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// `root` and every process below it, given `(pid, parent pid)` pairs.
pub fn descendants(root: u32, parents: &[(u32, u32)]) -> Vec<u32> {
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        for &(pid, ppid) in parents {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
            }
        }
        next += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_pool::GpuKind;

    const MIB: u64 = 1 << 20;

    fn card(processes: Vec<(u32, u64)>) -> GpuInfo {
        GpuInfo {
            index: 0,
            uuid: "GPU-a".into(),
            name: "test card".into(),
            pci_bus_id: None,
            memory_total_bytes: 24 << 30,
            memory_free_bytes: 24 << 30,
            utilization_percent: None,
            temperature_c: None,
            healthy: true,
            health_note: None,
            foreign_processes: processes,
            kind: GpuKind::Nvml,
        }
    }

    #[test]
    fn card_used_by_an_outside_process_above_the_threshold_is_not_usable() {
        let verdict = judge_card(&card(vec![(900, 2048 * MIB)]), &[1], Some(1024 * MIB));
        assert!(!verdict.usable);
        let note = verdict.note.expect("a reason");
        assert!(note.contains("2048 MiB by pid 900"), "{note}");
    }

    #[test]
    fn outside_use_under_the_threshold_is_tolerated() {
        let verdict = judge_card(&card(vec![(900, 512 * MIB)]), &[1], Some(1024 * MIB));
        assert!(verdict.usable);
    }

    #[test]
    fn our_own_workers_do_not_count_as_outside_use() {
        let verdict = judge_card(&card(vec![(42, 70_000 * MIB)]), &[1, 42], Some(1024 * MIB));
        assert!(verdict.usable);
    }

    #[test]
    fn unhealthy_card_is_not_usable_and_says_why() {
        let mut device = card(Vec::new());
        device.healthy = false;
        device.health_note = Some("3 uncorrectable ECC errors".into());
        let verdict = judge_card(&device, &[], Some(1024 * MIB));
        assert_eq!(
            verdict,
            CardVerdict {
                usable: false,
                note: Some("3 uncorrectable ECC errors".into())
            }
        );
    }

    #[test]
    fn pools_without_a_threshold_ignore_other_processes() {
        let verdict = judge_card(&card(vec![(900, 20_000 * MIB)]), &[], None);
        assert!(verdict.usable);
    }

    #[test]
    fn own_bytes_add_up_our_processes_only() {
        let device = card(vec![(42, 3 * MIB), (43, 4 * MIB), (900, 100 * MIB)]);
        assert_eq!(own_worker_bytes(&device, &[42, 43]), Some(7 * MIB));
        assert_eq!(own_worker_bytes(&device, &[7]), None);
    }

    #[test]
    fn unreported_process_memory_is_no_observation() {
        let device = card(vec![(42, 0)]);
        assert_eq!(own_worker_bytes(&device, &[42]), None);
    }

    #[test]
    fn parent_pid_reads_past_a_command_with_spaces_and_parens() {
        let stat = "1234 (my (odd) worker) S 77 1234 1234 0 -1 4194560";
        assert_eq!(parent_pid(stat), Some(77));
        assert_eq!(parent_pid("garbage"), None);
    }

    #[test]
    fn descendants_follow_the_whole_subtree() {
        let parents = [(10, 1), (11, 10), (12, 11), (20, 1), (13, 10)];
        let mut found = descendants(10, &parents);
        found.sort_unstable();
        assert_eq!(found, [10, 11, 12, 13]);
    }

    #[test]
    fn own_pids_include_this_process_and_a_child_it_starts() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("start sleep");
        let pids = own_pids();
        let _ = child.kill();
        let _ = child.wait();
        assert!(pids.contains(&std::process::id()));
        assert!(pids.contains(&child.id()), "{pids:?}");
    }
}
