//! Property tests: random pools, random jobs, random arrivals, run as a discrete-event
//! simulation through the public API, with the scheduler's promises checked at every step.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::*;
use crate::PoolError;

#[derive(Debug, Clone)]
struct Plan {
    arrive_secs: u64,
    priority: i32,
    plain_gib: u64,
    plain_secs: u64,
    /// `(GiB, seconds)` with offload.
    offload: Option<(u64, u64)>,
    choice: OffloadChoice,
}

impl Plan {
    fn job(&self, id: &str, seq: u64) -> QueuedJob {
        QueuedJob {
            id: id.to_string(),
            priority: self.priority,
            seq,
            offload: self.choice,
            no_offload: Demand {
                vram_bytes: self.plain_gib * GIB,
                est: Duration::from_secs(self.plain_secs),
                host_bytes: 0,
            },
            with_offload: self.offload.map(|(gib, secs)| Demand {
                vram_bytes: gib * GIB,
                est: Duration::from_secs(secs),
                host_bytes: 0,
            }),
            may_reduce_frames: false,
            preferred_card: None,
            model: None,
        }
    }

    fn longest_secs(&self) -> u64 {
        self.plain_secs
            .max(self.offload.map_or(0, |(_, secs)| secs))
    }
}

fn plan(max_arrival: u64) -> impl Strategy<Value = Plan> {
    (
        0..=max_arrival,
        -2i32..3,
        1u64..90,
        1u64..500,
        proptest::option::of((1u64..30, 1u64..5)),
        prop::sample::select(vec![
            OffloadChoice::Auto,
            OffloadChoice::On,
            OffloadChoice::Off,
        ]),
    )
        .prop_map(
            |(arrive_secs, priority, plain_gib, plain_secs, offload, choice)| Plan {
                arrive_secs,
                priority,
                plain_gib,
                plain_secs,
                offload: offload.map(|(gib, slowdown)| (gib.min(plain_gib), plain_secs * slowdown)),
                choice,
            },
        )
}

fn pool() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(prop::sample::select(vec![16u64, 24, 48, 80]), 1..6)
}

struct Report {
    placed_at: HashMap<String, Duration>,
}

/// Runs `plans` (job `i` has id `j<i>` and seq `i`) on cards of the given GiB sizes, checking:
/// never two jobs on one card, never a job on a card it does not fit, the mode the job
/// allows, no job waiting while a free card fits it without offload, and every admitted job
/// placed in the end.
fn simulate(
    cards: &[u64],
    plans: &[Plan],
    policy: SchedulerPolicy,
) -> Result<Report, TestCaseError> {
    let states: Vec<CardState> = cards
        .iter()
        .enumerate()
        .map(|(i, &gib)| CardState {
            uuid: format!("card-{i}"),
            memory_total_bytes: gib * GIB,
            leased_by: None,
            drained: false,
            healthy: true,
        })
        .collect();
    let card_bytes: HashMap<String, u64> = states
        .iter()
        .map(|c| (c.uuid.clone(), c.memory_total_bytes))
        .collect();
    let mut scheduler = Scheduler::new(states, policy).expect("distinct uuids");
    let mut arrivals: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, plan) in plans.iter().enumerate() {
        arrivals.entry(plan.arrive_secs).or_default().push(i);
    }
    let mut finishes: BinaryHeap<Reverse<(Duration, String)>> = BinaryHeap::new();
    let mut on_card: HashMap<String, String> = HashMap::new();
    let mut queued: BTreeMap<String, usize> = BTreeMap::new();
    let mut placed_at = HashMap::new();
    let mut admitted = 0;
    loop {
        let next_arrival = arrivals.keys().next().map(|&s| Duration::from_secs(s));
        let next_finish = finishes.peek().map(|Reverse((at, _))| *at);
        let Some(now) = next_arrival.into_iter().chain(next_finish).min() else {
            break;
        };
        while let Some(Reverse((at, job))) = finishes.peek().cloned() {
            if at > now {
                break;
            }
            finishes.pop();
            let released = scheduler
                .release(&job, RunOutcome::Finished)
                .expect("finishing job is running");
            on_card.remove(&released.card_uuid);
        }
        if next_arrival == Some(now) {
            for i in arrivals.pop_first().map(|(_, v)| v).unwrap_or_default() {
                let id = format!("j{i}");
                match scheduler.enqueue(plans[i].job(&id, i as u64), now) {
                    Ok(()) => {
                        admitted += 1;
                        queued.insert(id, i);
                    }
                    Err(PoolError::Refused { refusal, .. }) => {
                        prop_assert!(refusal.estimate_bytes > refusal.largest_card_bytes);
                    }
                    Err(other) => return Err(TestCaseError::fail(other.to_string())),
                }
            }
        }
        for placement in scheduler.next_placements(now) {
            let i = queued
                .remove(&placement.job_id)
                .ok_or_else(|| TestCaseError::fail("placed a job that was not queued"))?;
            let plan = &plans[i];
            prop_assert!(
                on_card
                    .insert(placement.card_uuid.clone(), placement.job_id.clone())
                    .is_none(),
                "two jobs on {}",
                placement.card_uuid
            );
            let (gib, secs) = if placement.offload_used {
                prop_assert!(plan.choice != OffloadChoice::Off, "offload against `off`");
                plan.offload
                    .ok_or_else(|| TestCaseError::fail("offload without a mode"))?
            } else {
                prop_assert!(
                    !(plan.choice == OffloadChoice::On && plan.offload.is_some()),
                    "plain run against `on`"
                );
                (plan.plain_gib, plan.plain_secs)
            };
            prop_assert_eq!(placement.vram_bytes, gib * GIB);
            prop_assert!(
                gib * GIB <= card_bytes[&placement.card_uuid],
                "job does not fit its card"
            );
            placed_at.insert(placement.job_id.clone(), now);
            finishes.push(Reverse((now + Duration::from_secs(secs), placement.job_id)));
        }
        let largest_free = card_bytes
            .iter()
            .filter(|(uuid, _)| !on_card.contains_key(*uuid))
            .map(|(_, &bytes)| bytes)
            .max();
        for (id, &i) in &queued {
            let plan = &plans[i];
            let plain_allowed = !(plan.choice == OffloadChoice::On && plan.offload.is_some());
            let fits_free = largest_free.is_some_and(|bytes| plan.plain_gib * GIB <= bytes);
            prop_assert!(
                !(plain_allowed && fits_free),
                "{id} waits beside a free card it fits"
            );
        }
    }
    prop_assert_eq!(
        placed_at.len(),
        admitted,
        "some admitted jobs were never placed"
    );
    prop_assert_eq!(scheduler.queued_len() + scheduler.running_len(), 0);
    Ok(Report { placed_at })
}

proptest! {
    #[test]
    fn placements_respect_cards_and_modes(
        cards in pool(),
        plans in prop::collection::vec(plan(2000), 1..60),
    ) {
        simulate(&cards, &plans, SchedulerPolicy::default())?;
    }

    #[test]
    fn an_old_low_priority_job_is_placed_within_one_job_after_aging(
        cards in pool(),
        probe_gib in 1u64..80,
        probe_choice in prop::sample::select(vec![OffloadChoice::Auto, OffloadChoice::Off]),
        stream in prop::collection::vec(plan(0), 20..80),
        gap_secs in 1u64..60,
    ) {
        let largest = *cards.iter().max().expect("at least one card");
        let probe = Plan {
            arrive_secs: 0,
            priority: -10,
            plain_gib: probe_gib.min(largest),
            plain_secs: 300,
            offload: Some((probe_gib.min(16), 1200)),
            choice: probe_choice,
        };
        // High-priority jobs keep arriving, one every `gap_secs`.
        let mut plans = vec![probe];
        plans.extend(stream.into_iter().enumerate().map(|(k, mut plan)| {
            plan.priority = 10;
            plan.arrive_secs = k as u64 * gap_secs;
            plan
        }));
        let max_wait = Duration::from_secs(600);
        let policy = SchedulerPolicy { max_wait, ..SchedulerPolicy::default() };
        let longest = Duration::from_secs(plans.iter().map(Plan::longest_secs).max().unwrap_or(0));
        let report = simulate(&cards, &plans, policy)?;
        let placed = report.placed_at.get("j0").copied();
        prop_assert!(placed.is_some(), "probe never placed");
        prop_assert!(
            placed <= Some(max_wait + longest),
            "probe placed at {:?}, bound {:?}", placed, max_wait + longest
        );
    }
}
