//! What the dashboard plots: a short history the daemon keeps itself, so no Prometheus is
//! needed to see the last hour of a card or the last day of the farm.
//!
//! - **Cards**, every [`CARD_SAMPLE_SECS`] for the last hour: utilisation and memory in use.
//!   CPU slots have neither (they share the host), so a CPU pool gets one series for the host
//!   instead: its CPU busy fraction and its RAM in use, from `/proc`.
//! - **The farm**, per minute for the last day: clips finished, frames rendered, and the most
//!   jobs queued and running at once.
//!
//! Memory is bounded: at most 361 points per card and 1441 minutes, and series of cards gone
//! for an hour are dropped. The follower (see `follow`) feeds it and writes it to
//! `<state_dir>/http-history.json` once a minute and when the daemon stops; a restart reads it
//! back, so the plots survive restarts except for the minute before.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// How often cards are sampled, in seconds.
pub const CARD_SAMPLE_SECS: u64 = 10;
/// How far back card samples go.
pub const CARD_WINDOW_SECS: u64 = 3600;
/// The farm's bucket width.
pub const FARM_BUCKET_SECS: u64 = 60;
/// How far back the farm's buckets go.
pub const FARM_WINDOW_SECS: u64 = 86_400;
/// The series name of the host in a CPU pool.
pub const HOST_SERIES: &str = "host";
/// The file the history is kept in, in the state directory.
pub const HISTORY_FILE: &str = "http-history.json";
/// The file format; another number is ignored (the plots start empty).
const FORMAT: u32 = 1;

/// One sample of a card (or of the host, for a CPU pool).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CardPoint {
    /// Unix time, seconds.
    pub t: u64,
    /// Busy fraction 0–1, where the device reports one.
    pub util: Option<f32>,
    /// Bytes in use, where known.
    pub used: Option<u64>,
    /// Bytes in all.
    pub total: u64,
}

/// The samples of one card.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CardSeries {
    pub name: String,
    /// `nvml`, `simulated` or `host`.
    pub kind: String,
    pub points: VecDeque<CardPoint>,
}

/// One minute of the farm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FarmPoint {
    /// The minute's start, Unix seconds.
    pub t: u64,
    /// Clips finished in the minute.
    pub clips: u32,
    /// Frames those clips hold.
    pub frames: u64,
    /// The most jobs queued at once in the minute.
    pub queued: u32,
    /// The most jobs running at once in the minute.
    pub running: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Data {
    format: u32,
    cards: BTreeMap<String, CardSeries>,
    farm: VecDeque<FarmPoint>,
}

/// What the host's CPU and memory are doing now (for a CPU pool).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostSample {
    pub cpu_busy: Option<f32>,
    pub memory_total: u64,
    pub memory_used: u64,
}

/// The history; shared between the follower (writes) and the pages (read).
pub struct History {
    data: Mutex<Data>,
    /// The latest host sample, for the cards table.
    host: Mutex<Option<HostSample>>,
}

impl History {
    pub fn new() -> History {
        History {
            data: Mutex::new(Data {
                format: FORMAT,
                ..Data::default()
            }),
            host: Mutex::new(None),
        }
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep using it.
        self.data
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads a saved history; a missing, unreadable or foreign file gives an empty one.
    pub fn load(path: &Path, now_s: u64) -> History {
        let history = History::new();
        let Ok(text) = std::fs::read_to_string(path) else {
            return history;
        };
        match serde_json::from_str::<Data>(&text) {
            Ok(data) if data.format == FORMAT => {
                *history.data() = data;
                history.prune(now_s);
            }
            Ok(_) => {
                tracing::info!(file = %path.display(), "history file of another format; the plots start empty")
            }
            Err(err) => {
                tracing::warn!(file = %path.display(), error = %err, "cannot read the history; the plots start empty")
            }
        }
        history
    }

    /// Writes the history (atomically).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec(&*self.data()).map_err(std::io::Error::other)?;
        jobs::state::write_atomic(path, &text)
    }

    /// The minute bucket holding `t_s`, created (with the buckets between) if it is new.
    fn bucket(data: &mut Data, t_s: u64, now_s: u64) -> Option<&mut FarmPoint> {
        let start = t_s - t_s % FARM_BUCKET_SECS;
        if start + FARM_WINDOW_SECS < now_s {
            return None;
        }
        let after_last = data.farm.back().is_none_or(|last| last.t < start);
        if after_last {
            data.farm.push_back(FarmPoint {
                t: start,
                ..FarmPoint::default()
            });
            return data.farm.back_mut();
        }
        match data.farm.binary_search_by_key(&start, |point| point.t) {
            Ok(at) => data.farm.get_mut(at),
            Err(at) => {
                data.farm.insert(
                    at,
                    FarmPoint {
                        t: start,
                        ..FarmPoint::default()
                    },
                );
                data.farm.get_mut(at)
            }
        }
    }

    /// A clip finished at `ts_ms` with `frames` frames.
    pub fn record_clip(&self, ts_ms: u64, frames: u64, now_s: u64) {
        let mut data = self.data();
        if let Some(point) = Self::bucket(&mut data, ts_ms / 1000, now_s) {
            point.clips += 1;
            point.frames += frames;
        }
    }

    /// How many jobs are queued and running now.
    pub fn record_jobs(&self, now_s: u64, queued: u32, running: u32) {
        let mut data = self.data();
        if let Some(point) = Self::bucket(&mut data, now_s, now_s) {
            point.queued = point.queued.max(queued);
            point.running = point.running.max(running);
        }
        drop(data);
        self.prune(now_s);
    }

    /// One sample of every device: CPU slots become the one host series.
    pub fn sample_cards(
        &self,
        now_s: u64,
        devices: &[gpu_pool::GpuInfo],
        host: Option<HostSample>,
    ) {
        let mut data = self.data();
        let mut host_seen = false;
        for device in devices {
            if device.kind == gpu_pool::GpuKind::Cpu {
                host_seen = true;
                continue;
            }
            let series = data.cards.entry(device.uuid.clone()).or_default();
            series.name = format!("{} #{}", device.name, device.index);
            series.kind = match device.kind {
                gpu_pool::GpuKind::Nvml => "nvml",
                _ => "simulated",
            }
            .to_string();
            series.points.push_back(CardPoint {
                t: now_s,
                util: device.utilization_percent.map(|p| p as f32 / 100.0),
                used: Some(
                    device
                        .memory_total_bytes
                        .saturating_sub(device.memory_free_bytes),
                ),
                total: device.memory_total_bytes,
            });
        }
        if let (true, Some(sample)) = (host_seen, host) {
            let series = data.cards.entry(HOST_SERIES.to_string()).or_default();
            series.name = "host (CPU slots)".to_string();
            series.kind = HOST_SERIES.to_string();
            series.points.push_back(CardPoint {
                t: now_s,
                util: sample.cpu_busy,
                used: Some(sample.memory_used),
                total: sample.memory_total,
            });
        }
        drop(data);
        if host_seen {
            *self.host.lock().unwrap_or_else(|p| p.into_inner()) = host;
        }
        self.prune(now_s);
    }

    /// The latest host sample, when the pool has CPU slots.
    pub fn latest_host(&self) -> Option<HostSample> {
        *self.host.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops what is older than the windows, and cards with no sample left.
    fn prune(&self, now_s: u64) {
        let mut data = self.data();
        while data
            .farm
            .front()
            .is_some_and(|point| point.t + FARM_WINDOW_SECS < now_s)
        {
            data.farm.pop_front();
        }
        for series in data.cards.values_mut() {
            while series
                .points
                .front()
                .is_some_and(|point| point.t + CARD_WINDOW_SECS < now_s)
            {
                series.points.pop_front();
            }
        }
        data.cards.retain(|_, series| !series.points.is_empty());
    }

    /// The cards' series (by uuid, the host as `host`) and the farm's minutes.
    pub fn snapshot(&self) -> (BTreeMap<String, CardSeries>, Vec<FarmPoint>) {
        let data = self.data();
        (data.cards.clone(), data.farm.iter().copied().collect())
    }

    /// As JSON, for `GET /api/v1/history`.
    pub fn to_json(&self) -> Value {
        let (cards, farm) = self.snapshot();
        json!({
            "card_sample_secs": CARD_SAMPLE_SECS,
            "farm_bucket_secs": FARM_BUCKET_SECS,
            "cards": cards.iter().map(|(uuid, series)| json!({
                "uuid": uuid,
                "name": series.name,
                "kind": series.kind,
                "points": series.points.iter().map(|p| json!({
                    "t": p.t,
                    "utilization_ratio": p.util,
                    "memory_used_bytes": p.used,
                    "memory_total_bytes": p.total,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "farm": farm.iter().map(|p| json!({
                "t": p.t,
                "clips": p.clips,
                "frames": p.frames,
                "queued": p.queued,
                "running": p.running,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Where the history is kept.
pub fn history_path(state_dir: &Path) -> PathBuf {
    state_dir.join(HISTORY_FILE)
}

/// Reads the host's CPU and memory from `/proc`; the CPU fraction needs the previous reading
/// of `/proc/stat` (`last`, updated here).
pub fn read_host(last: &mut Option<(u64, u64)>) -> Option<HostSample> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |key: &str| -> Option<u64> {
        meminfo
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:").unwrap_or(0);
    let cpu_busy = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| cpu_times(&stat))
        .and_then(|(busy, all)| {
            let previous = last.replace((busy, all));
            let (busy0, all0) = previous?;
            let span = all.checked_sub(all0).filter(|span| *span > 0)?;
            Some((busy.saturating_sub(busy0) as f32 / span as f32).clamp(0.0, 1.0))
        });
    Some(HostSample {
        cpu_busy,
        memory_total: total,
        memory_used: total.saturating_sub(available),
    })
}

/// (busy, all) jiffies from the `cpu` line of `/proc/stat`; idle and iowait are not busy.
fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let numbers: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let all: u64 = numbers.iter().take(8).sum();
    let idle = numbers.get(3).copied().unwrap_or(0) + numbers.get(4).copied().unwrap_or(0);
    Some((all.saturating_sub(idle), all))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(uuid: &str, kind: gpu_pool::GpuKind, util: Option<u32>) -> gpu_pool::GpuInfo {
        gpu_pool::GpuInfo {
            index: 0,
            uuid: uuid.into(),
            name: "Card".into(),
            pci_bus_id: None,
            memory_total_bytes: 100,
            memory_free_bytes: 40,
            utilization_percent: util,
            temperature_c: None,
            healthy: true,
            health_note: None,
            foreign_processes: Vec::new(),
            kind,
        }
    }

    #[test]
    fn clips_land_in_their_minute_and_old_minutes_go() {
        let history = History::new();
        let now = 1_000_000_050;
        history.record_clip(now * 1000, 33, now);
        history.record_clip((now - 5) * 1000, 33, now);
        history.record_clip((now - 120) * 1000, 10, now);
        history.record_clip((now - FARM_WINDOW_SECS - 120) * 1000, 10, now);
        history.record_jobs(now, 4, 1);
        history.record_jobs(now, 2, 1);
        let (_, farm) = history.snapshot();
        assert_eq!(farm.len(), 2, "{farm:?}");
        assert!(farm[0].t < farm[1].t, "in time order");
        assert_eq!((farm[1].clips, farm[1].frames), (2, 66));
        assert_eq!(
            (farm[1].queued, farm[1].running),
            (4, 1),
            "the most at once"
        );
        assert_eq!(farm[0].frames, 10);
        // A day later only new minutes are left.
        history.record_jobs(now + FARM_WINDOW_SECS + 60, 0, 0);
        let (_, farm) = history.snapshot();
        assert_eq!(farm.len(), 1, "{farm:?}");
    }

    #[test]
    fn memory_stays_bounded() {
        let history = History::new();
        let start = 2_000_000_000;
        for step in 0..10_000u64 {
            let now = start + step * CARD_SAMPLE_SECS;
            history.sample_cards(
                now,
                &[card("GPU-a", gpu_pool::GpuKind::Nvml, Some(50))],
                None,
            );
            history.record_clip(now * 1000, 1, now);
        }
        let (cards, farm) = history.snapshot();
        let points = cards["GPU-a"].points.len() as u64;
        assert!(
            points <= CARD_WINDOW_SECS / CARD_SAMPLE_SECS + 1,
            "{points}"
        );
        assert!(farm.len() as u64 <= FARM_WINDOW_SECS / FARM_BUCKET_SECS + 1);
        assert_eq!(cards["GPU-a"].points.back().and_then(|p| p.util), Some(0.5));
        assert_eq!(cards["GPU-a"].points.back().and_then(|p| p.used), Some(60));
        // A card that disappears is dropped once its hour is over.
        let later = start + 10_000 * CARD_SAMPLE_SECS + CARD_WINDOW_SECS + 1;
        history.sample_cards(later, &[], None);
        assert!(history.snapshot().0.is_empty());
    }

    #[test]
    fn cpu_slots_become_one_host_series() {
        let history = History::new();
        let host = HostSample {
            cpu_busy: Some(0.25),
            memory_total: 1000,
            memory_used: 300,
        };
        let slots = [
            card("cpu-0", gpu_pool::GpuKind::Cpu, None),
            card("cpu-1", gpu_pool::GpuKind::Cpu, None),
        ];
        history.sample_cards(100, &slots, Some(host));
        let (cards, _) = history.snapshot();
        assert_eq!(cards.keys().collect::<Vec<_>>(), vec![HOST_SERIES]);
        assert_eq!(cards[HOST_SERIES].points[0].used, Some(300));
        assert_eq!(history.latest_host(), Some(host));
    }

    #[test]
    fn a_saved_history_comes_back_and_a_broken_one_is_empty() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(HISTORY_FILE);
        let history = History::new();
        history.record_clip(5_000_000, 8, 5_000);
        history.save(&path).expect("saved");
        let back = History::load(&path, 5_010);
        assert_eq!(back.snapshot().1, history.snapshot().1);
        std::fs::write(&path, "{not json").expect("write");
        assert!(History::load(&path, 5_010).snapshot().1.is_empty());
    }

    #[test]
    fn cpu_times_skip_idle_and_iowait() {
        let stat = "cpu  10 0 5 80 5 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(cpu_times(stat), Some((15, 100)));
        let mut last = None;
        let first = read_host(&mut last).expect("this machine has /proc");
        assert!(first.memory_total > 0 && first.memory_used <= first.memory_total);
        assert!(last.is_some());
    }
}
