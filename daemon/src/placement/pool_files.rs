//! The files through which the GPU pool's state outlives the daemon and reaches the CLI.
//!
//! The CLI never talks to the daemon's memory (see `cli.rs`), so everything `reelspool gpus`
//! shows or asks goes through the state directory:
//!
//! ```text
//! state/leases.json          job → card; a resumed job goes back to its card (gpu_pool::LeaseTable)
//! state/drained.json         cards out of placement, with why; survives restarts
//! state/observed-peaks.json  measured GPU memory peaks that corrected the memory profiles
//! state/gpus.json            the daemon's view of every card, rewritten as it changes
//! state/control/card-*.json  drain/undrain requests the daemon applies on its next tick
//! ```
//!
//! Requests are files rather than a socket so that they need no daemon to be queued: one
//! written while the daemon is starting is applied as soon as it ticks, and a request never
//! races a daemon restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gpu_pool::GpuKind;
use serde::{Deserialize, Serialize};

/// Where each file of the pool lives under the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPaths {
    pub leases: PathBuf,
    pub drained: PathBuf,
    pub observations: PathBuf,
    pub snapshot: PathBuf,
    pub control: PathBuf,
}

impl PoolPaths {
    pub fn new(state_dir: &Path) -> PoolPaths {
        PoolPaths {
            leases: state_dir.join("leases.json"),
            drained: state_dir.join("drained.json"),
            observations: state_dir.join("observed-peaks.json"),
            snapshot: state_dir.join("gpus.json"),
            control: state_dir.join("control"),
        }
    }
}

/// Why a card is out of placement and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    pub reason: String,
    pub since_ms: u64,
}

/// The drained cards by UUID. A UUID the pool no longer has is kept: the card may be back
/// after the next reboot, and it should come back drained.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainedCards {
    pub cards: BTreeMap<String, DrainRecord>,
}

impl DrainedCards {
    /// Reads `drained.json`; a missing file means no card is drained.
    pub fn load(path: &Path) -> Result<DrainedCards> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not a drained-cards file; fix it or move it aside (every card is then undrained)",
                    path.display()
                )
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(DrainedCards::default()),
            Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the file durably: a drain must survive a power cut like any acknowledged state.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).context("cannot encode drained cards")?;
        jobs::state::write_atomic(path, &json)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// What an operator asks of a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CardAction {
    Drain,
    Undrain,
}

/// One request in `control/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardRequest {
    pub uuid: String,
    pub action: CardAction,
    pub requested_at_ms: u64,
}

/// The request file of a card: one per card, so a later request replaces an earlier one that
/// was not applied yet (the last word wins, as it would if the daemon were quicker).
pub fn request_path(control_dir: &Path, uuid: &str) -> PathBuf {
    let slug: String = uuid
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    control_dir.join(format!("card-{slug}.json"))
}

/// Queues a request for the daemon (atomically: the daemon never reads half a file).
pub fn write_request(control_dir: &Path, request: &CardRequest) -> Result<PathBuf> {
    std::fs::create_dir_all(control_dir)
        .with_context(|| format!("cannot create {}", control_dir.display()))?;
    let path = request_path(control_dir, &request.uuid);
    let json = serde_json::to_vec(request).context("cannot encode the request")?;
    jobs::state::write_atomic(&path, &json)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Takes every pending request out of `control/`, oldest first.
///
/// Each file is first renamed to a name only the daemon uses, then read and removed: a
/// request the CLI writes in the meantime lands under the original name and waits for the
/// next tick instead of being deleted unread. Unreadable requests come back as `Err` with
/// the reason, so they are logged rather than retried forever.
pub fn take_requests(control_dir: &Path) -> Vec<Result<CardRequest, String>> {
    let Ok(entries) = std::fs::read_dir(control_dir) else {
        return Vec::new();
    };
    let mut taken = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("card-") && name.ends_with(".json")) {
            continue;
        }
        let claimed = control_dir.join(format!(".taken-{name}"));
        if std::fs::rename(entry.path(), &claimed).is_err() {
            continue;
        }
        let parsed = std::fs::read(&claimed)
            .map_err(|err| err.to_string())
            .and_then(|bytes| {
                serde_json::from_slice::<CardRequest>(&bytes).map_err(|err| err.to_string())
            })
            .map_err(|err| format!("{name}: {err}"));
        let _ = std::fs::remove_file(&claimed);
        taken.push(parsed);
    }
    taken.sort_by_key(|request| request.as_ref().map(|r| r.requested_at_ms).unwrap_or(0));
    taken
}

/// One card as `gpus.json` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CardView {
    pub uuid: String,
    pub index: u32,
    pub name: String,
    pub kind: GpuKind,
    pub memory_total_bytes: u64,
    /// Whether the daemon may start jobs on it as far as the driver and other users go.
    pub healthy: bool,
    /// Why it is unhealthy or in use by another process, or a warning.
    pub health_note: Option<String>,
    pub drained: bool,
    pub drain_reason: Option<String>,
    /// The job running on it.
    pub job: Option<String>,
    /// The model its worker holds loaded, running a job or idle (a warm worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_model: Option<String>,
}

/// The whole of `gpus.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolSnapshot {
    pub updated_at_ms: u64,
    /// The daemon that wrote it.
    pub daemon_pid: u32,
    pub cards: Vec<CardView>,
}

impl PoolSnapshot {
    /// Replaces `gpus.json` (temp file and rename, no fsync: it is a view rebuilt from the
    /// durable files at every start, and it is rewritten often).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).context("cannot encode gpus.json")?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let temp = dir.join(format!(".gpus.json.tmp-{}", std::process::id()));
        std::fs::write(&temp, json)
            .and_then(|()| std::fs::rename(&temp, path))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reads `gpus.json`; `None` when the daemon never wrote one.
    pub fn load(path: &Path) -> Result<Option<PoolSnapshot>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{} is not a GPU snapshot", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uuid: &str, action: CardAction, at: u64) -> CardRequest {
        CardRequest {
            uuid: uuid.into(),
            action,
            requested_at_ms: at,
        }
    }

    #[test]
    fn a_later_request_for_the_same_card_replaces_the_earlier_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_request(dir.path(), &request("GPU-1", CardAction::Drain, 1)).expect("write");
        write_request(dir.path(), &request("GPU-1", CardAction::Undrain, 2)).expect("write");
        let taken = take_requests(dir.path());
        assert_eq!(taken, [Ok(request("GPU-1", CardAction::Undrain, 2))]);
    }

    #[test]
    fn requests_are_taken_oldest_first_and_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_request(dir.path(), &request("GPU-b", CardAction::Drain, 20)).expect("write");
        write_request(dir.path(), &request("GPU-a", CardAction::Undrain, 10)).expect("write");
        let taken: Vec<String> = take_requests(dir.path())
            .into_iter()
            .map(|r| r.expect("valid").uuid)
            .collect();
        assert_eq!(taken, ["GPU-a", "GPU-b"]);
        assert!(take_requests(dir.path()).is_empty());
        let left = std::fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(left, 0, "every request file is removed once taken");
    }

    #[test]
    fn a_garbled_request_is_reported_not_retried() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("card-x.json"), "{ nope").expect("write");
        let taken = take_requests(dir.path());
        assert_eq!(taken.len(), 1);
        assert!(taken[0].as_ref().is_err_and(|e| e.contains("card-x.json")));
        assert!(take_requests(dir.path()).is_empty());
    }

    #[test]
    fn odd_characters_in_a_uuid_stay_inside_the_control_dir() {
        let path = request_path(Path::new("/s/control"), "../../etc/x y");
        assert_eq!(path, Path::new("/s/control/card-.._.._etc_x_y.json"));
    }

    #[test]
    fn drained_cards_survive_save_and_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("drained.json");
        assert_eq!(
            DrainedCards::load(&path)
                .expect("missing is empty")
                .cards
                .len(),
            0
        );
        let mut drained = DrainedCards::default();
        drained.cards.insert(
            "GPU-1".into(),
            DrainRecord {
                reason: "by operator".into(),
                since_ms: 5,
            },
        );
        drained.save(&path).expect("save");
        assert_eq!(DrainedCards::load(&path).expect("load"), drained);
    }
}
