use super::*;
use crate::testkit::sample_summary;
use crate::{NoticeKind, WebhookTarget};

fn recipients() -> Recipients {
    Recipients {
        email: vec!["ops@example.com".into(), "lead@example.com".into()],
        webhooks: vec![WebhookTarget {
            url: "https://hooks.example.com/render/T0KEN".into(),
            secret_env: Some("HOOK_SECRET".into()),
            slack: false,
        }],
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn enqueue_writes_one_record_per_recipient() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    let ids = outbox
        .enqueue(&sample_summary("job-1", NoticeKind::Done), &recipients())
        .expect("enqueue");
    assert_eq!(ids.len(), 3);
    let files = files_in(&dir.path().join("pending"));
    assert_eq!(files.len(), 3);
    for id in &ids {
        assert!(files.contains(&dir.path().join("pending").join(format!("{id}.json"))));
    }
}

#[test]
fn enqueue_of_the_same_event_twice_records_it_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    let summary = sample_summary("job-1", NoticeKind::Done);
    let first = outbox
        .enqueue(&summary, &recipients())
        .expect("first enqueue");
    let second = outbox
        .enqueue(&summary, &recipients())
        .expect("second enqueue");
    assert_eq!(first, second);
    assert_eq!(outbox.pending().expect("pending").len(), 3);
}

#[test]
fn different_events_and_progress_steps_are_separate_notices() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    let one = Recipients {
        email: vec!["ops@example.com".into()],
        webhooks: vec![],
    };
    let mut progress = sample_summary("job-1", NoticeKind::Progress);
    progress.clips_done = 10;
    let a = outbox.enqueue(&progress, &one).expect("progress at 10");
    progress.clips_done = 20;
    let b = outbox.enqueue(&progress, &one).expect("progress at 20");
    let c = outbox
        .enqueue(&sample_summary("job-1", NoticeKind::Done), &one)
        .expect("done");
    assert_ne!(a, b);
    assert_ne!(a, c);
    assert_eq!(outbox.pending().expect("pending").len(), 3);
}

#[test]
fn non_http_webhook_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    let mut bad = recipients();
    bad.webhooks.push(WebhookTarget {
        url: "file:///etc/passwd".into(),
        secret_env: None,
        slack: false,
    });
    let err = outbox
        .enqueue(&sample_summary("job-1", NoticeKind::Done), &bad)
        .expect_err("file:// must be refused");
    assert!(err.to_string().contains("\"file\""), "{err}");
    assert!(files_in(&dir.path().join("pending")).is_empty());
}

#[test]
fn records_name_the_secret_but_never_hold_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    outbox
        .enqueue(&sample_summary("job-1", NoticeKind::Done), &recipients())
        .expect("enqueue");
    let webhook = outbox
        .pending()
        .expect("pending")
        .into_iter()
        .find(|d| d.destination.channel() == ChannelKind::Webhook)
        .expect("the webhook delivery is pending");
    let text = fs::read_to_string(
        dir.path()
            .join("pending")
            .join(webhook.delivery_id.file_name()),
    )
    .expect("read record");
    let record: serde_json::Value = serde_json::from_str(&text).expect("record is JSON");
    assert_eq!(record["destination"]["secret_env"], "HOOK_SECRET");
    assert_eq!(record["format"], 1);
}

#[cfg(unix)]
#[test]
fn records_are_private_to_the_daemon_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path().join("outbox")).expect("open outbox");
    let ids = outbox
        .enqueue(&sample_summary("job-1", NoticeKind::Done), &recipients())
        .expect("enqueue");
    let record = dir.path().join("outbox/pending").join(ids[0].file_name());
    let mode = fs::metadata(record)
        .expect("stat record")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = fs::metadata(dir.path().join("outbox/pending"))
        .expect("stat dir")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
}

#[test]
fn settling_moves_the_record_and_status_follows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    outbox
        .enqueue(&sample_summary("job-1", NoticeKind::Failed), &recipients())
        .expect("enqueue");
    let mut pending = outbox.pending().expect("pending");
    let mut delivered = pending.remove(0);
    delivered.state = DeliveryState::Delivered;
    delivered.attempts = 1;
    outbox.settle(&delivered).expect("settle delivered");
    let mut failed = pending.remove(0);
    failed.state = DeliveryState::PermanentFailure;
    failed.attempts = 1;
    failed.last_error = Some("HTTP 404".into());
    outbox.settle(&failed).expect("settle failed");

    let statuses = outbox.status_for_job("job-1").expect("status");
    let state_of = |id: &DeliveryId| {
        statuses
            .iter()
            .find(|s| &s.delivery_id == id)
            .map(|s| (s.state, s.attempts, s.last_error.clone()))
    };
    assert_eq!(
        state_of(&delivered.delivery_id),
        Some((DeliveryState::Delivered, 1, None))
    );
    assert_eq!(
        state_of(&failed.delivery_id),
        Some((DeliveryState::PermanentFailure, 1, Some("HTTP 404".into())))
    );
    assert_eq!(statuses.len(), 3);
    assert_eq!(outbox.pending().expect("pending").len(), 1);
    assert!(outbox
        .status_for_job("another-job")
        .expect("status")
        .is_empty());
}

#[test]
fn status_redacts_webhook_paths() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    outbox
        .enqueue(&sample_summary("job-1", NoticeKind::Done), &recipients())
        .expect("enqueue");
    let statuses = outbox.status_for_job("job-1").expect("status");
    let webhook = statuses
        .iter()
        .find(|s| s.channel == ChannelKind::Webhook)
        .expect("webhook status");
    assert_eq!(webhook.target, "https://hooks.example.com/...");
}

#[test]
fn reopening_after_a_crash_mid_settle_keeps_the_settled_copy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    let ids = outbox
        .enqueue(&sample_summary("job-1", NoticeKind::Done), &recipients())
        .expect("enqueue");
    // The crash: the delivered copy was written, the pending one not yet
    // removed; and a temp file was left behind.
    let name = ids[0].file_name();
    fs::copy(
        dir.path().join("pending").join(&name),
        dir.path().join("delivered").join(&name),
    )
    .expect("simulate the first half of settle");
    fs::write(dir.path().join("tmp").join("half-written.tmp"), b"{").expect("leave a temp file");

    let reopened = Outbox::open(dir.path()).expect("reopen outbox");
    let pending_ids: Vec<DeliveryId> = reopened
        .pending()
        .expect("pending")
        .into_iter()
        .map(|d| d.delivery_id)
        .collect();
    assert!(!pending_ids.contains(&ids[0]));
    assert_eq!(pending_ids.len(), 2);
    assert!(files_in(&dir.path().join("tmp")).is_empty());
}

#[test]
fn a_corrupt_record_does_not_hide_the_others() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    outbox
        .enqueue(&sample_summary("job-1", NoticeKind::Done), &recipients())
        .expect("enqueue");
    fs::write(
        dir.path().join("pending").join("garbage.json"),
        b"{not json",
    )
    .expect("write garbage");
    assert_eq!(outbox.pending().expect("pending").len(), 3);
    assert!(
        dir.path().join("pending").join("garbage.json").exists(),
        "kept for a person to see"
    );
}

#[test]
fn pruning_removes_only_old_delivered_records() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    outbox
        .enqueue(&sample_summary("job-1", NoticeKind::Done), &recipients())
        .expect("enqueue");
    let mut pending = outbox.pending().expect("pending");
    let mut old = pending.remove(0);
    old.state = DeliveryState::Delivered;
    old.settled_at_ms = Some(1);
    outbox.settle(&old).expect("settle old");
    let mut fresh = pending.remove(0);
    fresh.state = DeliveryState::Delivered;
    fresh.settled_at_ms = Some(now_ms());
    outbox.settle(&fresh).expect("settle fresh");

    let removed = outbox
        .prune_delivered(Duration::from_secs(3600))
        .expect("prune");
    assert_eq!(removed, 1);
    assert_eq!(files_in(&dir.path().join("delivered")).len(), 1);
}
