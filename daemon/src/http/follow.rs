//! Once a second: the queue index gives the jobs by state; every job whose `events.jsonl`
//! grew (a finished one for an hour after its end, for the notices) has its new events read,
//! and each becomes counters and a server-sent event; new intake rejections are counted; the
//! DCGM job-mapping files follow `gpus.json`; finished clips and the queue's length go into the
//! dashboard's history, and every 10 s a sample of the cards (or, for CPU slots, of the host).
//! The cost per tick is one index read and one `stat` per job still watched.
//!
//! Counters start at 0 when the daemon starts (what Prometheus expects of a restart): events
//! already on disk then are skipped, and only what happens afterwards is counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jobs::state::{JobDir, JobEvent, Phase};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::history::{read_host, CARD_SAMPLE_SECS};
use super::metrics::{
    rejection_kind, retry_reason, CardLabels, ChannelLabel, DeliveryLabels, KindLabel, ModelLabels,
    OutcomeLabel, SourceLabel, StateLabel, UuidLabel,
};
use super::shared::Shared;
use crate::placement::pool_files::{PoolPaths, PoolSnapshot};

const TICK: Duration = Duration::from_secs(1);
/// Every phase, so a state that empties shows 0 instead of vanishing.
const PHASES: [Phase; 5] = [
    Phase::Queued,
    Phase::Running,
    Phase::Done,
    Phase::Failed,
    Phase::Cancelled,
];

/// What is known of one job between ticks.
struct Followed {
    /// Events already handled.
    seen: usize,
    /// The size of `events.jsonl` when last read: a file that has not grown is not read again.
    len: u64,
    /// When the job ended (its terminal event, or its first tick as a finished job). Notices
    /// are still recorded after the end, so a finished job is watched for a while longer.
    ended_at_ms: Option<u64>,
    /// The card of its current attempt.
    uuid: Option<String>,
}

/// How long a finished job's events are still read (notice deliveries come after the end).
const AFTER_END_MS: u64 = 3_600_000;

#[derive(Default)]
struct Follower {
    jobs: HashMap<String, Followed>,
    rejected: HashSet<OsString>,
    dcgm: BTreeMap<u32, String>,
    first: bool,
    /// When the cards were last sampled for the history, and the history last saved (Unix s).
    sampled_at_s: u64,
    saved_at_s: u64,
    /// The previous `/proc/stat` reading, for the host's CPU busy fraction.
    cpu_times: Option<(u64, u64)>,
}

/// How often the history is written to disk.
const SAVE_EVERY_SECS: u64 = 60;

pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut follower = Follower {
        first: true,
        ..Follower::default()
    };
    loop {
        let tick_shared = Arc::clone(&shared);
        follower = match tokio::task::spawn_blocking(move || {
            follower.tick(&tick_shared);
            follower
        })
        .await
        {
            Ok(follower) => follower,
            Err(err) => {
                warn!(error = %err, "the metrics follower failed; metrics stop moving");
                return;
            }
        };
        tokio::select! {
            _ = shutdown.wait_for(|stopping| *stopping) => break,
            () = tokio::time::sleep(TICK) => {}
        }
    }
    if let Some(dir) = &shared.config.dcgm_job_mapping_dir {
        for index in follower.dcgm.keys() {
            let _ = std::fs::remove_file(dir.join(index.to_string()));
        }
    }
    save_history(&shared);
}

fn save_history(shared: &Shared) {
    let path = super::history::history_path(&shared.config.state_dir);
    if let Err(err) = shared.history.save(&path) {
        warn!(file = %path.display(), error = %err, "cannot save the dashboard's history");
    }
}

impl Follower {
    fn tick(&mut self, shared: &Shared) {
        let snapshot = PoolSnapshot::load(&PoolPaths::new(&shared.config.state_dir).snapshot)
            .ok()
            .flatten();
        self.follow_jobs(shared, snapshot.as_ref());
        self.count_rejections(shared);
        if let (Some(dir), Some(snapshot)) = (&shared.config.dcgm_job_mapping_dir, &snapshot) {
            self.map_dcgm(dir, snapshot);
        }
        let now_s = jobs::state::now_ms() / 1000;
        if now_s >= self.sampled_at_s + CARD_SAMPLE_SECS {
            self.sampled_at_s = now_s;
            let devices = gpu_pool::discover(&shared.config.gpu_pool).unwrap_or_default();
            let host = devices
                .iter()
                .any(|device| device.kind == gpu_pool::GpuKind::Cpu)
                .then(|| read_host(&mut self.cpu_times))
                .flatten();
            shared.history.sample_cards(now_s, &devices, host);
        }
        if now_s >= self.saved_at_s + SAVE_EVERY_SECS {
            if !self.first {
                save_history(shared);
            }
            self.saved_at_s = now_s;
        }
        self.first = false;
    }

    fn follow_jobs(&mut self, shared: &Shared, snapshot: Option<&PoolSnapshot>) {
        let jobs_dir = &shared.layout.jobs;
        let entries = match crate::jobview::index_entries(jobs_dir) {
            Ok(entries) => entries,
            Err(err) => {
                debug!(error = %format!("{err:#}"), "cannot read the queue index");
                return;
            }
        };
        let mut counts: HashMap<Phase, i64> = HashMap::new();
        for entry in &entries {
            *counts.entry(entry.phase).or_default() += 1;
        }
        for phase in PHASES {
            shared
                .metrics
                .jobs
                .get_or_create(&StateLabel {
                    state: phase.as_str().to_string(),
                })
                .set(counts.get(&phase).copied().unwrap_or(0));
        }
        let oldest_queued = entries
            .iter()
            .filter(|entry| entry.phase == Phase::Queued)
            .map(|entry| entry.submitted_at_ms)
            .min();
        shared
            .metrics
            .queue_oldest
            .set(oldest_queued.map_or(0.0, |ms| ms as f64 / 1000.0));
        let count = |phase| u32::try_from(counts.get(&phase).copied().unwrap_or(0)).unwrap_or(0);
        shared.history.record_jobs(
            jobs::state::now_ms() / 1000,
            count(Phase::Queued),
            count(Phase::Running),
        );
        let card_index = |uuid: &str| -> String {
            snapshot
                .and_then(|s| s.cards.iter().find(|card| card.uuid == uuid))
                .map_or_else(|| "unknown".to_string(), |card| card.index.to_string())
        };
        let now = jobs::state::now_ms();
        for entry in &entries {
            let id = entry.id.to_string();
            let terminal = entry.phase.is_terminal();
            let dir = JobDir::new(jobs_dir.join(&id));
            let followed = self.jobs.entry(id.clone()).or_insert_with(|| Followed {
                seen: 0,
                len: 0,
                ended_at_ms: None,
                uuid: None,
            });
            if followed
                .ended_at_ms
                .is_some_and(|ended| now.saturating_sub(ended) > AFTER_END_MS)
            {
                continue;
            }
            // A stat per job and tick; the events are read only when the file grew.
            let len = std::fs::metadata(dir.events_jsonl()).map_or(0, |meta| meta.len());
            if len == followed.len {
                if terminal && followed.ended_at_ms.is_none() {
                    followed.ended_at_ms = Some(now);
                }
                continue;
            }
            let events = match dir.read_events() {
                Ok(events) => events,
                Err(err) => {
                    debug!(job = %id, error = %err, "cannot read job events");
                    continue;
                }
            };
            followed.len = len;
            if self.first {
                // Already on disk at start: not counted, only remembered. Jobs finished
                // before the start are not watched at all.
                followed.seen = events.len();
                followed.uuid = entry.gpu.clone();
                if terminal {
                    followed.ended_at_ms = Some(0);
                }
                continue;
            }
            let start = followed.seen.min(events.len());
            for event in &events[start..] {
                let finished = handle_event(shared, followed, entry, &dir, event, &card_index);
                let message = json!({
                    "job": id,
                    "name": entry.name,
                    "event": event.event,
                    "ts_ms": event.ts_ms,
                    "fields": event.fields,
                });
                let _ = shared.events.send(message.to_string());
                if finished {
                    followed.ended_at_ms = Some(now);
                }
            }
            followed.seen = events.len();
        }
    }

    fn count_rejections(&mut self, shared: &Shared) {
        let Ok(listing) = std::fs::read_dir(&shared.layout.rejected) else {
            return;
        };
        for item in listing.flatten() {
            let name = item.file_name();
            if !name.as_encoded_bytes().ends_with(b".error") || self.rejected.contains(&name) {
                continue;
            }
            if !self.first {
                let text = std::fs::read_to_string(item.path()).unwrap_or_default();
                let first_line = text.lines().next().unwrap_or("");
                shared
                    .metrics
                    .rejections
                    .get_or_create(&KindLabel {
                        kind: rejection_kind(first_line).to_string(),
                    })
                    .inc();
            }
            self.rejected.insert(name);
        }
    }

    /// `<dir>/<index>` holds the id of the job on card `index`, and exists only while one runs.
    fn map_dcgm(&mut self, dir: &Path, snapshot: &PoolSnapshot) {
        let mut wanted = BTreeMap::new();
        for card in &snapshot.cards {
            if let Some(job) = &card.job {
                wanted.insert(card.index, job.clone());
            }
        }
        if wanted == self.dcgm {
            return;
        }
        if let Err(err) = std::fs::create_dir_all(dir) {
            warn!(dir = %dir.display(), error = %err, "cannot create the DCGM job-mapping directory");
            return;
        }
        for index in self.dcgm.keys() {
            if !wanted.contains_key(index) {
                let path = dir.join(index.to_string());
                if let Err(err) = std::fs::remove_file(&path) {
                    if err.kind() != std::io::ErrorKind::NotFound {
                        warn!(file = %path.display(), error = %err, "cannot remove a DCGM job-mapping file");
                    }
                }
            }
        }
        for (index, job) in &wanted {
            if self.dcgm.get(index) == Some(job) {
                continue;
            }
            let path = dir.join(index.to_string());
            if let Err(err) = jobs::state::write_atomic(&path, format!("{job}\n").as_bytes()) {
                warn!(file = %path.display(), error = %err, "cannot write a DCGM job-mapping file");
            }
        }
        self.dcgm = wanted;
    }
}

/// Counts one event; true when it ends the job.
fn handle_event(
    shared: &Shared,
    followed: &mut Followed,
    entry: &jobs::index::IndexEntry,
    dir: &JobDir,
    event: &JobEvent,
    card_index: &dyn Fn(&str) -> String,
) -> bool {
    let metrics = &shared.metrics;
    let field_str = |key: &str| event.fields.get(key).and_then(|v| v.as_str());
    let field_f64 = |key: &str| event.fields.get(key).and_then(|v| v.as_f64());
    match event.event.as_str() {
        "queued" => {
            metrics
                .submitted
                .get_or_create(&SourceLabel {
                    source: "spool".into(),
                })
                .inc();
        }
        "running" => followed.uuid = field_str("gpu_uuid").map(str::to_string),
        "started" => {
            let waited = event.ts_ms.saturating_sub(entry.submitted_at_ms) as f64 / 1000.0;
            metrics.queue_wait.observe(waited);
        }
        "resumed" => {
            metrics.resumes.inc();
        }
        "clip_done" => {
            let uuid = followed
                .uuid
                .clone()
                .or_else(|| entry.gpu.clone())
                .unwrap_or_else(|| "unknown".into());
            metrics
                .clips
                .get_or_create(&CardLabels {
                    gpu: card_index(&uuid),
                    uuid: uuid.clone(),
                })
                .inc();
            let frames = event.fields.get("frames").and_then(|v| v.as_u64());
            if let Some(frames) = frames {
                metrics
                    .frames
                    .get_or_create(&UuidLabel { uuid })
                    .inc_by(frames);
            }
            shared.history.record_clip(
                event.ts_ms,
                frames.unwrap_or(0),
                jobs::state::now_ms() / 1000,
            );
            if let Some(secs) = field_f64("secs") {
                metrics.clip_duration.observe(secs);
            }
        }
        "retry" => {
            metrics
                .retries
                .get_or_create(&super::metrics::ReasonLabel {
                    reason: retry_reason(field_str("reason").unwrap_or("")).to_string(),
                })
                .inc();
        }
        "notice_delivered" | "notice_failed" | "notice_retrying" => {
            let outcome = event.event.trim_start_matches("notice_").to_string();
            metrics
                .deliveries
                .get_or_create(&DeliveryLabels {
                    channel: field_str("channel").unwrap_or("unknown").to_string(),
                    outcome,
                })
                .inc();
        }
        "done" | "failed" | "cancelled" => {
            let outcome = OutcomeLabel {
                outcome: event.event.clone(),
            };
            metrics.finished.get_or_create(&outcome).inc();
            if let Ok(state) = dir.load_state() {
                if let Some(started) = state.started_at_ms {
                    let secs = event.ts_ms.saturating_sub(started) as f64 / 1000.0;
                    metrics.job_duration.get_or_create(&outcome).observe(secs);
                }
            }
            metrics.last_finished.set(event.ts_ms as f64 / 1000.0);
            followed.uuid = None;
            return true;
        }
        _ => {}
    }
    false
}

/// Sets the gauges read at scrape time: cards (from discovery and `gpus.json`) and the outbox.
pub fn refresh_scrape_gauges(shared: &Shared) {
    let metrics = &shared.metrics;
    let snapshot = PoolSnapshot::load(&PoolPaths::new(&shared.config.state_dir).snapshot)
        .ok()
        .flatten();
    let live = gpu_pool::discover(&shared.config.gpu_pool).unwrap_or_default();
    metrics.gpu_memory_total.clear();
    metrics.gpu_memory_used.clear();
    metrics.gpu_utilization.clear();
    metrics.gpu_assigned.clear();
    for card in &live {
        let labels = ModelLabels {
            gpu: card.index.to_string(),
            uuid: card.uuid.clone(),
            model: card.name.clone(),
        };
        let as_i64 = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
        metrics
            .gpu_memory_total
            .get_or_create(&labels)
            .set(as_i64(card.memory_total_bytes));
        metrics.gpu_memory_used.get_or_create(&labels).set(as_i64(
            card.memory_total_bytes
                .saturating_sub(card.memory_free_bytes),
        ));
        let card_labels = CardLabels {
            gpu: card.index.to_string(),
            uuid: card.uuid.clone(),
        };
        // Every card's counters exist from the start, at 0.
        let _ = metrics.clips.get_or_create(&card_labels);
        let _ = metrics.frames.get_or_create(&UuidLabel {
            uuid: card.uuid.clone(),
        });
        if let Some(percent) = card.utilization_percent {
            metrics
                .gpu_utilization
                .get_or_create(&card_labels)
                .set(f64::from(percent) / 100.0);
        }
        let assigned = snapshot.as_ref().is_some_and(|snapshot| {
            snapshot
                .cards
                .iter()
                .any(|view| view.uuid == card.uuid && view.job.is_some())
        });
        metrics
            .gpu_assigned
            .get_or_create(&card_labels)
            .set(i64::from(assigned));
    }
    metrics.gpu_drained.clear();
    for card in snapshot.iter().flat_map(|snapshot| &snapshot.cards) {
        metrics
            .gpu_drained
            .get_or_create(&CardLabels {
                gpu: card.index.to_string(),
                uuid: card.uuid.clone(),
            })
            .set(i64::from(card.drained));
    }
    // Per channel: how many wait, and when the oldest of them was queued (ms).
    let mut pending: BTreeMap<&'static str, (i64, Option<u64>)> = super::metrics::CHANNELS
        .into_iter()
        .map(|channel| (channel, (0, None)))
        .collect();
    if let Ok(outbox) = notices::Outbox::open(shared.config.state_dir.join("outbox")) {
        if let Ok(deliveries) = outbox.pending() {
            for delivery in deliveries {
                let channel = match delivery.destination {
                    notices::Destination::Email { .. } => "email",
                    notices::Destination::Webhook(_) => "webhook",
                };
                let (count, oldest) = pending.entry(channel).or_default();
                *count += 1;
                *oldest = Some(
                    oldest.map_or(delivery.created_at_ms, |ms| ms.min(delivery.created_at_ms)),
                );
            }
        }
    }
    for (channel, (count, oldest)) in pending {
        let label = ChannelLabel {
            channel: channel.to_string(),
        };
        metrics.outbox.get_or_create(&label).set(count);
        metrics
            .outbox_oldest
            .get_or_create(&label)
            .set(oldest.map_or(0.0, |ms| ms as f64 / 1000.0));
    }
}
