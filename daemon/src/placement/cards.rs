//! Cards changing state while the daemon runs: operator drains, drains after repeated
//! failures, NVML health and outside use, and the `gpus.json` view of it all.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gpu_pool::Released;
use jobs::state::now_ms;
use tracing::{info, warn};

use super::health::{self, CardVerdict, PoolReading};
use super::pool_files::{self, CardAction, CardRequest, CardView, DrainRecord, PoolSnapshot};
use super::Placement;

/// `gpus.json` is rewritten at least this often, so its `updated_at_ms` shows the daemon is
/// alive even when no card changes.
const SNAPSHOT_REFRESH: Duration = Duration::from_secs(30);

impl Placement {
    /// The scheduler's 250 ms tick: operator requests, the latest NVML reading, `gpus.json`.
    pub fn on_tick(&mut self) {
        for request in pool_files::take_requests(&self.paths.control) {
            match request {
                Ok(request) => self.apply_request(&request),
                Err(err) => warn!(error = %err, "ignoring an unreadable request in control/"),
            }
        }
        if let Some(reading) = self.watch.as_ref().and_then(|watch| watch.latest()) {
            self.apply_reading(reading);
        }
        let stale = self
            .snapshot_written_at
            .is_none_or(|at| at.elapsed() >= SNAPSHOT_REFRESH);
        if self.snapshot_dirty || stale {
            self.write_snapshot();
        }
    }

    fn apply_request(&mut self, request: &CardRequest) {
        let uuid = request.uuid.as_str();
        let result = match request.action {
            CardAction::Drain => self.scheduler.drain(uuid),
            CardAction::Undrain => self.scheduler.undrain(uuid),
        };
        if let Err(err) = result {
            warn!(gpu = %uuid, error = %err, "ignoring a drain request for a card not in the pool");
            return;
        }
        match request.action {
            CardAction::Drain => {
                info!(gpu = %uuid, "card drained by the operator; a job running there finishes");
                self.drained.cards.insert(
                    uuid.to_string(),
                    DrainRecord {
                        reason: "drained by the operator".into(),
                        since_ms: now_ms(),
                    },
                );
            }
            CardAction::Undrain => {
                info!(gpu = %uuid, "card undrained by the operator");
                self.drained.cards.remove(uuid);
            }
        }
        self.save_drained();
    }

    /// Records a drain `gpu_pool::Scheduler` made after the card's failures reached the
    /// threshold, so that it survives a restart like an operator's drain.
    pub(super) fn note_failure_drain(&mut self, released: &Released) {
        warn!(
            gpu = %released.card_uuid,
            failures = released.consecutive_failures,
            "card drained after repeated failed runs; its jobs go to other cards. Check it, then \
             `reelspool gpus undrain {}`",
            released.card_uuid
        );
        self.drained.cards.insert(
            released.card_uuid.clone(),
            DrainRecord {
                reason: format!(
                    "{} failed runs in a row (gpu_pool.failure_drain_threshold)",
                    released.consecutive_failures
                ),
                since_ms: now_ms(),
            },
        );
        self.save_drained();
    }

    fn save_drained(&mut self) {
        if let Err(err) = self.drained.save(&self.paths.drained) {
            warn!(error = %format!("{err:#}"), "cannot save drained cards; the change holds until the next restart");
        }
        self.snapshot_dirty = true;
    }

    /// Acts on an NVML reading: cards turn usable or unusable, running jobs' peaks grow.
    fn apply_reading(&mut self, reading: PoolReading) {
        let devices = match reading.devices {
            Ok(devices) => devices,
            Err(err) => {
                warn!(error = %err, "cannot read the GPUs; card states stay as they were");
                return;
            }
        };
        let job_on: HashMap<String, String> = self
            .running
            .iter()
            .map(|(job, run)| (run.card_uuid.clone(), job.clone()))
            .collect();
        let known: Vec<String> = self.scheduler.cards().map(|c| c.uuid.clone()).collect();
        for uuid in known {
            let Some(device) = devices.iter().find(|d| d.uuid == uuid) else {
                self.set_verdict(
                    &uuid,
                    CardVerdict {
                        usable: false,
                        note: Some("NVML no longer reports this card".into()),
                    },
                );
                continue;
            };
            let verdict = health::judge_card(device, &reading.own_pids, self.threshold_bytes);
            if let Some(job) = job_on.get(&uuid) {
                let bytes = health::own_worker_bytes(device, &reading.own_pids);
                if let Some(run) = self.running.get_mut(job) {
                    run.peak_vram_bytes = run.peak_vram_bytes.max(bytes);
                }
            }
            self.devices.insert(uuid.clone(), device.clone());
            self.set_verdict(&uuid, verdict);
        }
    }

    fn set_verdict(&mut self, uuid: &str, verdict: CardVerdict) {
        let before = self.verdicts.get(uuid);
        if before == Some(&verdict) {
            return;
        }
        if before.map(|v| v.usable) != Some(verdict.usable) {
            let note = verdict.note.as_deref().unwrap_or("");
            if verdict.usable {
                info!(gpu = %uuid, note, "card usable again");
            } else {
                warn!(gpu = %uuid, note, "card takes no new jobs");
            }
            if let Err(err) = self.scheduler.set_healthy(uuid, verdict.usable) {
                warn!(gpu = %uuid, error = %err, "cannot change a card's health");
            }
        }
        self.verdicts.insert(uuid.to_string(), verdict);
        self.snapshot_dirty = true;
    }

    /// Writes `gpus.json` for `reelspool gpus`.
    pub(super) fn write_snapshot(&mut self) {
        let cards = self
            .scheduler
            .cards()
            .map(|card| {
                let device = self.devices.get(&card.uuid);
                let verdict = self.verdicts.get(&card.uuid);
                CardView {
                    uuid: card.uuid.clone(),
                    index: device.map_or(0, |d| d.index),
                    name: device.map_or_else(String::new, |d| d.name.clone()),
                    kind: device.map_or(gpu_pool::GpuKind::Cpu, |d| d.kind),
                    memory_total_bytes: card.memory_total_bytes,
                    healthy: card.healthy,
                    health_note: verdict.and_then(|v| v.note.clone()),
                    drained: card.drained,
                    drain_reason: self
                        .drained
                        .cards
                        .get(&card.uuid)
                        .map(|record| record.reason.clone()),
                    job: card.leased_by.clone(),
                    worker_model: self.worker_models.get(&card.uuid).cloned(),
                }
            })
            .collect();
        let snapshot = PoolSnapshot {
            updated_at_ms: now_ms(),
            daemon_pid: std::process::id(),
            cards,
        };
        if let Err(err) = snapshot.save(&self.paths.snapshot) {
            warn!(error = %format!("{err:#}"), "cannot write gpus.json");
        }
        self.snapshot_dirty = false;
        self.snapshot_written_at = Some(Instant::now());
    }
}

/// The cards as discovery sees them now, with the drains on disk: what `reelspool gpus` shows
/// when no daemon runs (so no job holds a card, and every process on a card is an outside one).
pub fn discover_cards(config: &crate::config::DaemonConfig) -> anyhow::Result<Vec<CardView>> {
    let paths = pool_files::PoolPaths::new(&config.state_dir);
    let drained = pool_files::DrainedCards::load(&paths.drained)?;
    let threshold = config.gpu_pool.external_use_threshold_bytes();
    let devices = gpu_pool::discover(&config.gpu_pool)?;
    Ok(devices
        .iter()
        .map(|device| {
            let verdict = health::judge_card(device, &[], threshold);
            let drain = drained.cards.get(&device.uuid);
            CardView {
                uuid: device.uuid.clone(),
                index: device.index,
                name: device.name.clone(),
                kind: device.kind,
                memory_total_bytes: device.memory_total_bytes,
                healthy: verdict.usable,
                health_note: verdict.note,
                drained: drain.is_some(),
                drain_reason: drain.map(|record| record.reason.clone()),
                job: None,
                worker_model: None,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DaemonConfig;
    use gpu_pool::{GpuInfo, GIB};

    const MIB: u64 = 1 << 20;

    fn config(state: &std::path::Path) -> DaemonConfig {
        let text = format!(
            "spool_dir: {s}/spool\nstate_dir: {s}/state\nlog_dir: {s}/logs\n\
             gpu_pool: {{ kind: simulated, gpus: [{{name: small, memory_gb: 24, uuid: GPU-s}}, \
             {{name: big, memory_gb: 80, uuid: GPU-b}}] }}\n",
            s = state.display()
        );
        DaemonConfig::parse("test.yaml", &text).expect("valid test config")
    }

    fn snapshot_card(placement: &Placement, uuid: &str) -> CardView {
        PoolSnapshot::load(&placement.paths.snapshot)
            .expect("readable gpus.json")
            .expect("gpus.json written")
            .cards
            .into_iter()
            .find(|card| card.uuid == uuid)
            .expect("card listed")
    }

    fn reading(processes_on_small: Vec<(u32, u64)>, own_pids: Vec<u32>) -> PoolReading {
        let card = |uuid: &str, index, gib: u64, processes| GpuInfo {
            index,
            uuid: uuid.into(),
            name: uuid.into(),
            pci_bus_id: None,
            memory_total_bytes: gib * GIB,
            memory_free_bytes: gib * GIB,
            utilization_percent: None,
            temperature_c: None,
            healthy: true,
            health_note: None,
            foreign_processes: processes,
            kind: gpu_pool::GpuKind::Nvml,
        };
        PoolReading {
            devices: Ok(vec![
                card("GPU-s", 0, 24, processes_on_small),
                card("GPU-b", 1, 80, Vec::new()),
            ]),
            own_pids,
        }
    }

    #[test]
    fn operator_drain_is_applied_on_tick_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config(dir.path());
        std::fs::create_dir_all(&config.state_dir).expect("state dir");
        let mut placement = Placement::start(&config).expect("pool starts");
        let request = CardRequest {
            uuid: "GPU-s".into(),
            action: CardAction::Drain,
            requested_at_ms: now_ms(),
        };
        pool_files::write_request(&placement.paths.control, &request).expect("request");
        placement.on_tick();
        let card = snapshot_card(&placement, "GPU-s");
        assert!(card.drained);
        assert_eq!(
            card.drain_reason.as_deref(),
            Some("drained by the operator")
        );
        drop(placement);
        let restarted = Placement::start(&config).expect("pool restarts");
        let drained: Vec<&str> = restarted
            .scheduler
            .cards()
            .filter(|card| card.drained)
            .map(|card| card.uuid.as_str())
            .collect();
        assert_eq!(drained, ["GPU-s"]);
    }

    #[test]
    fn outside_use_takes_a_card_out_until_it_ends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config(dir.path());
        std::fs::create_dir_all(&config.state_dir).expect("state dir");
        let mut placement = Placement::start(&config).expect("pool starts");
        placement.threshold_bytes = Some(1024 * MIB);
        placement.apply_reading(reading(vec![(900, 4096 * MIB)], vec![1]));
        placement.write_snapshot();
        let card = snapshot_card(&placement, "GPU-s");
        assert!(!card.healthy);
        assert!(card
            .health_note
            .as_deref()
            .is_some_and(|n| n.contains("pid 900")));
        placement.apply_reading(reading(Vec::new(), vec![1]));
        placement.write_snapshot();
        assert!(snapshot_card(&placement, "GPU-s").healthy);
    }

    #[test]
    fn a_running_jobs_peak_is_the_highest_reading_and_is_saved_at_release() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config(dir.path());
        std::fs::create_dir_all(&config.state_dir).expect("state dir");
        let mut placement = Placement::start(&config).expect("pool starts");
        let id: jobs::state::JobId = "20260101-000000-000-0001".parse().expect("job id");
        let key = id.to_string();
        placement.plans.insert(
            key.clone(),
            super::super::JobPlan {
                profile: "liveavatar-14b".into(),
                width: 704,
                height: 384,
                frames: 48,
            },
        );
        placement.running.insert(
            key,
            super::super::RunRecord {
                card_uuid: "GPU-s".into(),
                offload_used: false,
                peak_vram_bytes: None,
            },
        );
        placement.apply_reading(reading(vec![(42, 70 * GIB), (900, MIB)], vec![42]));
        placement.apply_reading(reading(vec![(42, 60 * GIB)], vec![42]));
        let peak = placement.release(&id, super::super::RunEnd::Finished);
        assert_eq!(peak, Some(70 * GIB));
        let saved = std::fs::read_to_string(&placement.paths.observations).expect("saved");
        assert!(saved.contains(&(70 * GIB).to_string()), "{saved}");
    }

    #[test]
    fn a_card_missing_from_a_reading_takes_no_jobs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config(dir.path());
        std::fs::create_dir_all(&config.state_dir).expect("state dir");
        let mut placement = Placement::start(&config).expect("pool starts");
        let mut only_big = reading(Vec::new(), Vec::new());
        if let Ok(devices) = &mut only_big.devices {
            devices.retain(|device| device.uuid == "GPU-b");
        }
        placement.apply_reading(only_big);
        let small = placement
            .scheduler
            .cards()
            .find(|card| card.uuid == "GPU-s")
            .expect("card kept");
        assert!(!small.healthy);
    }
}
