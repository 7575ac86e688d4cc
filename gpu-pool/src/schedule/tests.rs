use std::path::Path;
use std::time::Duration;

use super::*;
use crate::profile::load_profiles;
use crate::PoolError;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn card(uuid: &str, gib: u64) -> CardState {
    CardState {
        uuid: uuid.into(),
        memory_total_bytes: gib * GIB,
        leased_by: None,
        drained: false,
        healthy: true,
    }
}

fn scheduler(cards: &[(&str, u64)]) -> Scheduler {
    let cards = cards.iter().map(|&(uuid, gib)| card(uuid, gib)).collect();
    Scheduler::new(cards, SchedulerPolicy::default()).expect("distinct uuids")
}

/// A job needing `gib` without offload for `secs`, no offload mode.
fn plain(id: &str, priority: i32, seq: u64, gib: u64, est_secs: u64) -> QueuedJob {
    QueuedJob {
        id: id.into(),
        priority,
        seq,
        offload: OffloadChoice::Auto,
        no_offload: Demand {
            vram_bytes: gib * GIB,
            est: secs(est_secs),
            host_bytes: 0,
        },
        with_offload: None,
        may_reduce_frames: false,
        preferred_card: None,
        model: None,
    }
}

/// A job that needs 70 GiB plainly or 20 GiB with offload, 4× slower.
fn big_model(id: &str, seq: u64, plain_secs: u64, offload: OffloadChoice) -> QueuedJob {
    QueuedJob {
        offload,
        with_offload: Some(Demand {
            vram_bytes: 20 * GIB,
            est: secs(4 * plain_secs),
            host_bytes: 0,
        }),
        ..plain(id, 0, seq, 70, plain_secs)
    }
}

fn placed(placements: &[Placement]) -> Vec<(&str, &str, bool)> {
    placements
        .iter()
        .map(|p| (p.job_id.as_str(), p.card_uuid.as_str(), p.offload_used))
        .collect()
}

fn liveavatar_704x384x48(
    id: &str,
    offload: OffloadChoice,
) -> (QueuedJob, MemoryProfile, EstimateRequest) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/profiles");
    let profiles = load_profiles(&dir).expect("shipped profiles load");
    let profile = profiles.get("liveavatar-14b").expect("shipped").clone();
    let req = EstimateRequest {
        width: 704,
        height: 384,
        frames: 48,
        offload,
    };
    (
        QueuedJob::from_profile(id, 0, 1, &profile, &req, 10),
        profile,
        req,
    )
}

#[test]
fn best_fit_puts_a_small_job_on_the_24gb_card() {
    let mut s = scheduler(&[("big", 80), ("small", 24)]);
    s.enqueue(plain("tiny", 0, 1, 2, 60), secs(0))
        .expect("fits");
    assert_eq!(
        placed(&s.next_placements(secs(0))),
        [("tiny", "small", false)]
    );
}

#[test]
fn liveavatar_704x384x48_without_offload_runs_only_on_the_80gb_card() {
    let mut s = scheduler(&[("a", 24), ("b", 24), ("big", 80)]);
    let (job, _, _) = liveavatar_704x384x48("la", OffloadChoice::Off);
    s.enqueue(job, secs(0)).expect("fits the 80 GB card");
    assert_eq!(placed(&s.next_placements(secs(0))), [("la", "big", false)]);
}

#[test]
fn liveavatar_without_offload_is_refused_by_24gb_cards_with_the_offload_hint() {
    let s = scheduler(&[("a", 24), ("b", 24)]);
    let (job, profile, req) = liveavatar_704x384x48("la", OffloadChoice::Off);
    let refusal = s.admit(&job).expect_err("79 GiB does not fit 24 GiB");
    assert_eq!(refusal.largest_card_bytes, 24 * GIB);
    assert!(refusal.suggestion.contains("`offload: true`"), "{refusal}");
    let hinted = refusal.with_profile_hint(&profile, &req);
    assert!(hinted.to_string().contains("79.0 GiB"), "{hinted}");
    assert!(
        hinted.suggestion.contains("42.0 GiB of host RAM"),
        "{hinted}"
    );
}

#[test]
fn job_too_big_for_every_card_is_refused_with_the_numbers() {
    let mut s = scheduler(&[("a", 24), ("b", 48)]);
    let err = s
        .enqueue(plain("huge", 0, 1, 100, 60), secs(0))
        .expect_err("100 GiB fits nothing");
    let text = err.to_string();
    assert!(
        text.contains("100.0 GiB") && text.contains("48.0 GiB"),
        "{text}"
    );
    assert!(text.contains("smaller `size`"), "{text}");
    assert_eq!(s.queued_len(), 0);
}

#[test]
fn offload_auto_runs_with_offload_on_24gb_cards() {
    let mut s = scheduler(&[("a", 24), ("b", 24)]);
    let (job, _, _) = liveavatar_704x384x48("la", OffloadChoice::Auto);
    s.enqueue(job, secs(0)).expect("fits with offload");
    let placements = s.next_placements(secs(0));
    assert_eq!(placed(&placements), [("la", "a", true)]);
    assert!(placements[0].vram_bytes <= 24 * GIB);
}

#[test]
fn offload_auto_runs_plainly_when_a_big_card_is_free() {
    let mut s = scheduler(&[("small", 24), ("big", 80)]);
    s.enqueue(big_model("j", 1, 100, OffloadChoice::Auto), secs(0))
        .expect("fits");
    assert_eq!(placed(&s.next_placements(secs(0))), [("j", "big", false)]);
}

#[test]
fn offload_auto_waits_for_the_big_card_when_that_finishes_sooner() {
    let mut s = scheduler(&[("small", 24), ("big", 80)]);
    s.enqueue(plain("running", 0, 1, 70, 100), secs(0))
        .expect("fits");
    assert_eq!(s.next_placements(secs(0)).len(), 1);
    // Plain: big card free at 100, done at 150. Offload now: done at 200. Wait.
    s.enqueue(big_model("waits", 2, 50, OffloadChoice::Auto), secs(0))
        .expect("fits");
    // A short job behind it backfills the small card the first job declined.
    s.enqueue(plain("short", 0, 3, 10, 30), secs(0))
        .expect("fits");
    assert_eq!(
        placed(&s.next_placements(secs(0))),
        [("short", "small", false)]
    );
    s.release("running", RunOutcome::Finished).expect("running");
    assert_eq!(
        placed(&s.next_placements(secs(100))),
        [("waits", "big", false)]
    );
}

#[test]
fn offload_auto_offloads_now_when_waiting_is_slower() {
    let mut s = scheduler(&[("small", 24), ("big", 80)]);
    s.enqueue(plain("running", 0, 1, 70, 1000), secs(0))
        .expect("fits");
    s.next_placements(secs(0));
    // Plain: done at 1050. Offload now: done at 200.
    s.enqueue(big_model("j", 2, 50, OffloadChoice::Auto), secs(0))
        .expect("fits");
    assert_eq!(placed(&s.next_placements(secs(0))), [("j", "small", true)]);
}

#[test]
fn second_waiter_counts_the_turn_of_the_first() {
    let mut s = scheduler(&[("small", 24), ("big", 80)]);
    s.enqueue(plain("running", 0, 1, 70, 100), secs(0))
        .expect("fits");
    s.next_placements(secs(0));
    // First: plain done at 100 + 50 = 150 < offload 200: waits, big card busy until 150.
    // Second: plain done at 150 + 50 = 200, not sooner than offload 200: offloads now.
    s.enqueue(big_model("first", 2, 50, OffloadChoice::Auto), secs(0))
        .expect("fits");
    s.enqueue(big_model("second", 3, 50, OffloadChoice::Auto), secs(0))
        .expect("fits");
    assert_eq!(
        placed(&s.next_placements(secs(0))),
        [("second", "small", true)]
    );
}

#[test]
fn higher_priority_goes_first_then_submission_order() {
    let mut s = scheduler(&[("only", 24)]);
    s.enqueue(plain("old-low", 0, 1, 1, 10), secs(0))
        .expect("fits");
    s.enqueue(plain("new-high", 5, 2, 1, 10), secs(0))
        .expect("fits");
    s.enqueue(plain("newer-low", 0, 3, 1, 10), secs(0))
        .expect("fits");
    let mut order = Vec::new();
    for t in 0..3 {
        let placements = s.next_placements(secs(t * 10));
        order.push(placements[0].job_id.clone());
        s.release(&placements[0].job_id, RunOutcome::Finished)
            .expect("running");
    }
    assert_eq!(order, ["new-high", "old-low", "newer-low"]);
}

#[test]
fn smaller_job_backfills_a_card_the_head_job_cannot_use() {
    let mut s = scheduler(&[("small", 24), ("big", 80)]);
    s.enqueue(plain("blocker", 9, 1, 70, 100), secs(0))
        .expect("fits");
    s.next_placements(secs(0));
    s.enqueue(plain("head", 9, 2, 70, 100), secs(0))
        .expect("fits");
    s.enqueue(plain("filler", 0, 3, 10, 10), secs(0))
        .expect("fits");
    assert_eq!(
        placed(&s.next_placements(secs(0))),
        [("filler", "small", false)]
    );
    assert!(s.is_queued("head"));
}

#[test]
fn backfill_never_takes_a_card_the_head_job_can_use() {
    let mut s = scheduler(&[("big", 80)]);
    s.enqueue(plain("blocker", 0, 1, 70, 100), secs(0))
        .expect("fits");
    s.next_placements(secs(0));
    s.enqueue(plain("head", 0, 2, 70, 100), secs(0))
        .expect("fits");
    s.enqueue(plain("small", 0, 3, 1, 10), secs(0))
        .expect("fits");
    s.release("blocker", RunOutcome::Finished).expect("running");
    assert_eq!(
        placed(&s.next_placements(secs(100))),
        [("head", "big", false)]
    );
}

fn starve_low_priority(max_wait: Duration) -> Option<Duration> {
    let policy = SchedulerPolicy {
        max_wait,
        ..SchedulerPolicy::default()
    };
    let mut s = Scheduler::new(vec![card("only", 24)], policy).expect("one card");
    s.enqueue(plain("low", 0, 0, 1, 10), secs(0)).expect("fits");
    // A high-priority job is always waiting; each runs 10 s.
    for step in 0..100u64 {
        let now = secs(step * 10);
        s.enqueue(plain(&format!("high-{step}"), 5, step + 1, 1, 10), now)
            .expect("fits");
        for placement in s.next_placements(now) {
            if placement.job_id == "low" {
                return Some(now);
            }
            s.release(&placement.job_id, RunOutcome::Finished)
                .expect("running");
        }
    }
    None
}

#[test]
fn aging_places_a_starved_low_priority_job() {
    assert_eq!(starve_low_priority(secs(300)), Some(secs(300)));
}

#[test]
fn without_aging_a_low_priority_job_starves() {
    assert_eq!(starve_low_priority(secs(1_000_000)), None);
}

#[test]
fn consecutive_failures_drain_a_card() {
    let mut s = scheduler(&[("flaky", 24)]);
    for attempt in 0..3u64 {
        let id = format!("j{attempt}");
        s.enqueue(plain(&id, 0, attempt, 1, 10), secs(attempt))
            .expect("fits");
        assert_eq!(s.next_placements(secs(attempt)).len(), 1);
        let released = s.release(&id, RunOutcome::Failed).expect("running");
        assert_eq!(released.consecutive_failures, attempt as u32 + 1);
        assert_eq!(released.drained_now, attempt == 2);
    }
    s.enqueue(plain("after", 0, 9, 1, 10), secs(5))
        .expect("fits");
    assert!(s.next_placements(secs(5)).is_empty(), "drained card used");
    s.undrain("flaky").expect("known card");
    assert_eq!(s.next_placements(secs(6)).len(), 1);
}

#[test]
fn a_finished_run_restarts_the_failure_count() {
    let mut s = scheduler(&[("card", 24)]);
    let outcomes = [
        RunOutcome::Failed,
        RunOutcome::Failed,
        RunOutcome::Finished,
        RunOutcome::Failed,
    ];
    let mut last = None;
    for (seq, outcome) in outcomes.into_iter().enumerate() {
        let id = format!("j{seq}");
        s.enqueue(plain(&id, 0, seq as u64, 1, 10), secs(0))
            .expect("fits");
        s.next_placements(secs(0));
        last = Some(s.release(&id, outcome).expect("running"));
    }
    let last = last.expect("four runs");
    assert_eq!(last.consecutive_failures, 1);
    assert!(!last.drained_now);
}

#[test]
fn drained_and_unhealthy_cards_get_no_jobs() {
    let mut s = scheduler(&[("drained", 24), ("sick", 24), ("good", 24)]);
    s.drain("drained").expect("known");
    s.set_healthy("sick", false).expect("known");
    s.enqueue(plain("a", 0, 1, 1, 10), secs(0)).expect("fits");
    s.enqueue(plain("b", 0, 2, 1, 10), secs(0)).expect("fits");
    assert_eq!(placed(&s.next_placements(secs(0))), [("a", "good", false)]);
}

#[test]
fn oom_without_offload_requeues_the_job_with_offload() {
    let mut s = scheduler(&[("small", 24), ("big", 80)]);
    s.enqueue(big_model("j", 1, 50, OffloadChoice::Auto), secs(0))
        .expect("fits");
    assert_eq!(placed(&s.next_placements(secs(0))), [("j", "big", false)]);
    assert_eq!(s.record_oom("j").expect("running"), OomFallback::OffloadOn);
    assert_eq!(placed(&s.next_placements(secs(1))), [("j", "small", true)]);
}

#[test]
fn oom_with_offload_asks_for_fewer_frames_when_allowed() {
    let mut s = scheduler(&[("small", 24)]);
    let mut job = big_model("j", 1, 50, OffloadChoice::On);
    job.may_reduce_frames = true;
    s.enqueue(job, secs(0)).expect("fits");
    s.next_placements(secs(0));
    assert_eq!(
        s.record_oom("j").expect("running"),
        OomFallback::FewerFrames
    );
    assert!(!s.is_queued("j"));
    assert_eq!(s.cards().filter(|c| c.leased_by.is_none()).count(), 1);
}

#[test]
fn oom_with_nothing_left_to_try_gives_up() {
    let mut s = scheduler(&[("card", 24)]);
    s.enqueue(plain("j", 0, 1, 10, 10), secs(0)).expect("fits");
    s.next_placements(secs(0));
    assert_eq!(s.record_oom("j").expect("running"), OomFallback::GiveUp);
}

#[test]
fn resumed_job_takes_its_old_card_when_free() {
    let mut s = scheduler(&[("a", 24), ("b", 24)]);
    let mut job = plain("resumed", 0, 1, 1, 10);
    job.preferred_card = Some("b".into());
    s.enqueue(job, secs(0)).expect("fits");
    assert_eq!(
        placed(&s.next_placements(secs(0))),
        [("resumed", "b", false)]
    );
}

#[test]
fn a_job_takes_the_free_card_whose_worker_holds_its_model() {
    let mut s = scheduler(&[("small", 24), ("cold", 48), ("warm", 48)]);
    s.set_warm_model("warm", Some("live-avatar".into()))
        .expect("known card");
    let mut same = plain("same-model", 0, 1, 30, 10);
    same.model = Some("live-avatar".into());
    let mut other = plain("other-model", 0, 2, 30, 10);
    other.model = Some("tiny".into());
    s.enqueue(same, secs(0)).expect("fits");
    s.enqueue(other, secs(0)).expect("fits");
    // Best fit alone would give the first job "cold" (the first of the two 48 GiB cards); the
    // warm worker makes it take "warm", and the other job takes what is left.
    assert_eq!(
        placed(&s.next_placements(secs(0))),
        [
            ("same-model", "warm", false),
            ("other-model", "cold", false)
        ]
    );
}

#[test]
fn a_warm_card_too_small_for_the_job_is_not_taken() {
    let mut s = scheduler(&[("warm", 24), ("big", 80)]);
    s.set_warm_model("warm", Some("live-avatar".into()))
        .expect("known card");
    let mut job = plain("big-job", 0, 1, 40, 10);
    job.model = Some("live-avatar".into());
    s.enqueue(job, secs(0)).expect("fits");
    assert_eq!(
        placed(&s.next_placements(secs(0))),
        [("big-job", "big", false)]
    );
}

#[test]
fn card_given_as_leased_is_busy_until_released() {
    let mut cards = vec![card("a", 24)];
    cards[0].leased_by = Some("old".into());
    let mut s = Scheduler::new(cards, SchedulerPolicy::default()).expect("valid");
    s.enqueue(plain("new", 0, 1, 1, 10), secs(0)).expect("fits");
    assert!(s.next_placements(secs(0)).is_empty());
    s.release("old", RunOutcome::Interrupted)
        .expect("leased at start");
    assert_eq!(placed(&s.next_placements(secs(1))), [("new", "a", false)]);
}

#[test]
fn duplicate_ids_and_unknown_jobs_are_errors() {
    let mut s = scheduler(&[("a", 24)]);
    s.enqueue(plain("j", 0, 1, 1, 10), secs(0)).expect("fits");
    let dup = s.enqueue(plain("j", 0, 2, 1, 10), secs(0));
    assert!(matches!(dup, Err(PoolError::DuplicateJob { .. })));
    let unknown = s.release("nope", RunOutcome::Finished);
    assert!(matches!(unknown, Err(PoolError::UnknownJob { .. })));
    assert!(matches!(
        s.drain("GPU-x"),
        Err(PoolError::UnknownCard { .. })
    ));
}

#[test]
fn cancelled_job_is_never_placed() {
    let mut s = scheduler(&[("a", 24)]);
    s.enqueue(plain("j", 0, 1, 1, 10), secs(0)).expect("fits");
    assert!(s.cancel("j"));
    assert!(s.next_placements(secs(0)).is_empty());
    assert!(!s.cancel("j"));
}

#[test]
fn duplicate_card_uuids_are_refused() {
    let err = Scheduler::new(
        vec![card("a", 24), card("a", 80)],
        SchedulerPolicy::default(),
    )
    .expect_err("same uuid twice");
    assert!(err.to_string().contains("`a`"), "{err}");
}

#[test]
fn one_pass_fills_every_free_card() {
    let mut s = scheduler(&[("a", 24), ("b", 24), ("c", 80)]);
    for seq in 0..5 {
        s.enqueue(plain(&format!("j{seq}"), 0, seq, 10, 10), secs(0))
            .expect("fits");
    }
    let placements = s.next_placements(secs(0));
    assert_eq!(
        placed(&placements),
        [("j0", "a", false), ("j1", "b", false), ("j2", "c", false)]
    );
}

#[test]
fn a_job_behind_big_card_jobs_offloads_instead_of_waiting_for_their_card() {
    let mut s = scheduler(&[("small", 24), ("big", 80)]);
    s.enqueue(plain("running", 0, 1, 70, 100), secs(0))
        .expect("fits");
    s.next_placements(secs(0));
    let mut big_only = plain("big-only", 0, 2, 70, 100);
    big_only.offload = OffloadChoice::Off;
    s.enqueue(big_only, secs(0)).expect("fits");
    // Alone it would wait (big card free at 100, done at 150 < 200), but `big-only` is ahead
    // and has the big card until 200: waiting would end at 250, offloading now at 200.
    s.enqueue(big_model("j", 3, 50, OffloadChoice::Auto), secs(0))
        .expect("fits");
    assert_eq!(placed(&s.next_placements(secs(0))), [("j", "small", true)]);
}

/// A job needing 20 GiB of GPU memory and `host_gib` of host memory.
fn streaming(id: &str, seq: u64, host_gib: u64) -> QueuedJob {
    let mut job = plain(id, 0, seq, 20, 60);
    job.no_offload.host_bytes = host_gib * GIB;
    job
}

#[test]
fn jobs_whose_host_memory_together_exceeds_the_hosts_do_not_run_side_by_side() {
    let mut s = scheduler(&[("a", 24), ("b", 24), ("c", 24)]);
    s.set_host_memory(Some(128 * GIB));
    s.enqueue(streaming("first", 1, 72), secs(0)).expect("fits");
    s.enqueue(streaming("second", 2, 72), secs(0))
        .expect("fits");
    s.enqueue(streaming("small", 3, 40), secs(0)).expect("fits");
    // 72 + 72 > 128: the second waits although two cards are free; the third fits beside.
    assert_eq!(
        placed(&s.next_placements(secs(0))),
        [("first", "a", false), ("small", "b", false)]
    );
    assert_eq!(s.host_bytes_in_use(), 112 * GIB);
    assert!(s.next_placements(secs(1)).is_empty());
    s.release("first", RunOutcome::Finished).expect("running");
    assert_eq!(
        placed(&s.next_placements(secs(2))),
        [("second", "a", false)]
    );
}

#[test]
fn without_a_host_size_host_memory_is_not_counted() {
    let mut s = scheduler(&[("a", 24), ("b", 24)]);
    s.enqueue(streaming("first", 1, 72), secs(0)).expect("fits");
    s.enqueue(streaming("second", 2, 72), secs(0))
        .expect("fits");
    assert_eq!(s.next_placements(secs(0)).len(), 2);
}
