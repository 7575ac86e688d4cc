//! The durable outbox: one file per delivery, in the state directory.
//!
//! ```text
//! <dir>/pending/<delivery-id>.json     waiting for a (first or next) attempt
//! <dir>/delivered/<delivery-id>.json   accepted by the receiver
//! <dir>/failed/<delivery-id>.json      permanent failure, with the reason
//! <dir>/tmp/                           temp files of atomic writes
//! ```
//!
//! A notice is durable once [`Outbox::enqueue`] returns: the daemon calls it
//! before it reports a job finished, so a crash after that point cannot lose
//! the notice, and a restart resumes it from `pending/`. Moving a record
//! between directories writes the new copy first and removes the old one
//! second; if a crash falls between the two, [`Outbox::open`] sees both and
//! keeps the settled one. Deliveries are therefore at least once, and the
//! delivery id sent with each (the idempotency key) lets receivers drop
//! the rare duplicate.
//!
//! Records never contain secrets: webhook secrets are stored by name
//! (`secret_env`), SMTP passwords live only in the config's files. They do
//! contain webhook URLs, which can embed tokens, so files are created 0600
//! in directories created 0700.

mod fsio;
mod types;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use types::{ChannelKind, Delivery, DeliveryId, DeliveryState, DeliveryStatus, Destination};

use crate::clock::now_ms;
use crate::{JobSummary, NoticeError, Recipients};
use fsio::{create_private_dir, sync_dir, write_file_atomically};

/// Version of the record format on disk, stored in each record.
pub const RECORD_FORMAT: u32 = 1;

/// A handle on the outbox directory. Cheap to clone; the daemon keeps one
/// for enqueuing and gives one to the [`crate::Dispatcher`].
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// Opens (creating if needed) the outbox in `dir`, and repairs what a
    /// crash may have left: temp files, and records both pending and
    /// settled.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Outbox, NoticeError> {
        let outbox = Outbox { dir: dir.into() };
        for sub in [
            outbox.pending_dir(),
            outbox.delivered_dir(),
            outbox.failed_dir(),
            outbox.tmp_dir(),
        ] {
            create_private_dir(&sub)?;
        }
        for leftover in list_dir(&outbox.tmp_dir())? {
            fs::remove_file(&leftover).map_err(|source| NoticeError::Io {
                action: "remove the leftover temp file",
                path: leftover.clone(),
                source,
            })?;
        }
        let mut removed_any = false;
        for pending in list_records(&outbox.pending_dir())? {
            let file_name = pending
                .file_name()
                .expect("invariant: listed records have a file name");
            let settled = outbox.delivered_dir().join(file_name).exists()
                || outbox.failed_dir().join(file_name).exists();
            if settled {
                remove_record(&pending)?;
                removed_any = true;
            }
        }
        if removed_any {
            sync_dir(&outbox.pending_dir())?;
        }
        Ok(outbox)
    }

    /// The directory this outbox lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records one delivery per (event, recipient) and returns their ids,
    /// after the records are on disk (fsynced file and directory).
    ///
    /// Ids are derived from the job, the event and the recipient, so
    /// enqueuing the same event again (say, after a crash between enqueue
    /// and the job's own state write) records nothing new and returns the
    /// same ids. A webhook URL that is not http(s) fails the whole call
    /// before anything is written.
    ///
    /// This blocks on fsync: from async code, call it inside
    /// `tokio::task::spawn_blocking`, then [`crate::DispatcherHandle::wake`].
    pub fn enqueue(
        &self,
        summary: &JobSummary,
        recipients: &Recipients,
    ) -> Result<Vec<DeliveryId>, NoticeError> {
        for target in &recipients.webhooks {
            crate::webhook::parse_webhook_url(&target.url)?;
        }
        let destinations = recipients
            .email
            .iter()
            .map(|to| Destination::Email {
                to: to.trim().to_string(),
            })
            .chain(
                recipients
                    .webhooks
                    .iter()
                    .cloned()
                    .map(Destination::Webhook),
            );

        let now = now_ms();
        let mut ids = Vec::new();
        let mut wrote_any = false;
        for destination in destinations {
            let delivery_id = DeliveryId::derive(summary, &destination);
            if !ids.contains(&delivery_id) && !self.is_known(&delivery_id) {
                let delivery = Delivery {
                    format: RECORD_FORMAT,
                    delivery_id: delivery_id.clone(),
                    destination,
                    summary: summary.clone(),
                    created_at_ms: now,
                    attempts: 0,
                    next_attempt_at_ms: now,
                    last_error: None,
                    state: DeliveryState::Pending,
                    settled_at_ms: None,
                };
                self.write_record(&self.pending_dir(), &delivery)?;
                wrote_any = true;
            }
            if !ids.contains(&delivery_id) {
                ids.push(delivery_id);
            }
        }
        if wrote_any {
            sync_dir(&self.pending_dir())?;
        }
        Ok(ids)
    }

    /// Deliveries still waiting, soonest due first.
    ///
    /// A record that does not parse is logged and skipped rather than
    /// failing the whole list: one damaged file must not stop every other
    /// notice. It stays on disk for a person to look at.
    pub fn pending(&self) -> Result<Vec<Delivery>, NoticeError> {
        let mut deliveries = read_records(&self.pending_dir())?;
        deliveries.sort_by_key(|d| (d.next_attempt_at_ms, d.created_at_ms));
        Ok(deliveries)
    }

    /// Where every notice of `job_id` stands.
    pub fn status_for_job(&self, job_id: &str) -> Result<Vec<DeliveryStatus>, NoticeError> {
        let mut statuses = Vec::new();
        for dir in [self.pending_dir(), self.delivered_dir(), self.failed_dir()] {
            statuses.extend(
                read_records(&dir)?
                    .iter()
                    .filter(|d| d.summary.job_id == job_id)
                    .map(Delivery::status),
            );
        }
        statuses.sort_by(|a, b| a.delivery_id.as_str().cmp(b.delivery_id.as_str()));
        Ok(statuses)
    }

    /// Removes records of delivered notices settled more than `older_than`
    /// ago, and returns how many. Failed records are kept: they are the
    /// evidence a person needs.
    pub fn prune_delivered(&self, older_than: Duration) -> Result<usize, NoticeError> {
        let cutoff =
            now_ms().saturating_sub(u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX));
        let mut removed = 0;
        for path in list_records(&self.delivered_dir())? {
            let old =
                read_record(&path).is_ok_and(|d| d.settled_at_ms.is_some_and(|at| at < cutoff));
            if old {
                remove_record(&path)?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&self.delivered_dir())?;
        }
        Ok(removed)
    }

    /// Rewrites a pending record after a failed attempt.
    pub(crate) fn save_pending(&self, delivery: &Delivery) -> Result<(), NoticeError> {
        self.write_record(&self.pending_dir(), delivery)?;
        sync_dir(&self.pending_dir())
    }

    /// Moves a delivery out of `pending/` into `delivered/` or `failed/`,
    /// according to its state.
    pub(crate) fn settle(&self, delivery: &Delivery) -> Result<(), NoticeError> {
        let dir = match delivery.state {
            DeliveryState::Delivered => self.delivered_dir(),
            DeliveryState::PermanentFailure => self.failed_dir(),
            DeliveryState::Pending => {
                unreachable!(
                    "invariant: only delivered or permanently failed deliveries are settled"
                )
            }
        };
        self.write_record(&dir, delivery)?;
        sync_dir(&dir)?;
        let pending = self.pending_dir().join(delivery.delivery_id.file_name());
        if pending.exists() {
            remove_record(&pending)?;
            sync_dir(&self.pending_dir())?;
        }
        Ok(())
    }

    fn is_known(&self, id: &DeliveryId) -> bool {
        [self.pending_dir(), self.delivered_dir(), self.failed_dir()]
            .iter()
            .any(|dir| dir.join(id.file_name()).exists())
    }

    fn write_record(&self, dir: &Path, delivery: &Delivery) -> Result<(), NoticeError> {
        let bytes = serde_json::to_vec_pretty(delivery)
            .expect("invariant: a delivery record has only string keys and serialises");
        write_file_atomically(
            &self.tmp_dir(),
            &dir.join(delivery.delivery_id.file_name()),
            &bytes,
        )
    }

    fn pending_dir(&self) -> PathBuf {
        self.dir.join("pending")
    }

    fn delivered_dir(&self) -> PathBuf {
        self.dir.join("delivered")
    }

    fn failed_dir(&self) -> PathBuf {
        self.dir.join("failed")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, NoticeError> {
    let entries = fs::read_dir(dir).map_err(|source| NoticeError::Io {
        action: "list the outbox directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| NoticeError::Io {
            action: "list the outbox directory",
            path: dir.to_path_buf(),
            source,
        })?;
        paths.push(entry.path());
    }
    Ok(paths)
}

fn list_records(dir: &Path) -> Result<Vec<PathBuf>, NoticeError> {
    Ok(list_dir(dir)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
        .collect())
}

fn read_record(path: &Path) -> Result<Delivery, NoticeError> {
    let bytes = fs::read(path).map_err(|source| NoticeError::Io {
        action: "read the outbox record",
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| NoticeError::CorruptRecord {
        path: path.to_path_buf(),
        source,
    })
}

fn read_records(dir: &Path) -> Result<Vec<Delivery>, NoticeError> {
    let mut deliveries = Vec::new();
    for path in list_records(dir)? {
        match read_record(&path) {
            Ok(delivery) => deliveries.push(delivery),
            // Removed between listing and reading: the dispatcher settled it.
            Err(NoticeError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::error!(error = %err, "skipping unreadable outbox record"),
        }
    }
    Ok(deliveries)
}

fn remove_record(path: &Path) -> Result<(), NoticeError> {
    fs::remove_file(path).map_err(|source| NoticeError::Io {
        action: "remove the outbox record",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests;
