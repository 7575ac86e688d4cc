//! One placement decision: which waiting jobs start now, and where.
//!
//! The pass walks waiting jobs in order, merging the per-tier queues (see `queue.rs`), and
//! stops when no card is free or `backfill_depth` jobs that could start were looked at. Jobs
//! of tiers too big for every free card cannot start; the first `backfill_depth` of them
//! claim their turn on the card they wait for (see `claim_turn`), and the rest of those tiers
//! is skipped unread. The pass decides everything against a copy of the free set, then
//! applies the decisions, so deciding only borrows the scheduler.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::Duration;

use super::projection::{Projection, NEVER};
use super::queue::{Entry, OrderKey, Slot};
use super::{Demand, Placement, Running, Scheduler};

/// How far past its estimate a run may go before waiting jobs stop counting on its end.
const OVERDUE_FRACTION: f64 = 0.5;

/// A job to start: its queue slot, the card index, the mode.
struct Pick {
    slot: Slot,
    card: usize,
    offload: bool,
    until: Duration,
}

/// What one job does in this pass.
enum Choice {
    Start {
        card: usize,
        offload: bool,
    },
    /// It could offload on a free card but finishes sooner by waiting for the card at
    /// position `wait_for`, which it claims in the projection until `until`.
    Wait {
        wait_for: usize,
        until: Duration,
    },
    /// No free card fits it any more; it claims its turn like a job of a bigger tier.
    NoFit,
}

impl Scheduler {
    /// Decides which waiting jobs start now, marks their cards leased, and returns them.
    ///
    /// Call it after anything that can free a card or add a job: enqueue, release, OOM,
    /// undrain, a card turning healthy. `now` must not go backwards between calls.
    pub fn next_placements(&mut self, now: Duration) -> Vec<Placement> {
        self.queue.promote_aged(now, self.policy.max_wait);
        if self.free.is_empty() || self.queue.len() == 0 {
            return Vec::new();
        }
        let picks = self.choose(now);
        picks
            .into_iter()
            .map(|pick| self.start(pick, now))
            .collect()
    }

    fn choose(&self, now: Duration) -> Vec<Pick> {
        let mut free = self.free.clone();
        let mut picks = Vec::new();
        let mut projection: Option<Projection> = None;
        let mut cursors: Vec<_> = (0..self.tier_bytes.len())
            .map(|t| self.queue.tier(t).iter())
            .collect();
        let mut heads: BinaryHeap<Reverse<(OrderKey, Slot, usize)>> = BinaryHeap::new();
        for (tier, cursor) in cursors.iter_mut().enumerate() {
            if let Some(&(key, slot)) = cursor.next() {
                heads.push(Reverse((key, slot, tier)));
            }
        }
        let (mut looked_at, mut claimed) = (0, 0);
        let mut host_left = self
            .host_memory_bytes
            .map(|total| total.saturating_sub(self.host_bytes_in_use()));
        while let Some(Reverse((_, slot, tier))) = heads.pop() {
            let Some(&(largest_free, _)) = free.last() else {
                break;
            };
            let startable = self.tier_bytes[tier] <= largest_free;
            if !startable && claimed >= self.policy.backfill_depth {
                // Enough turns claimed; drop the rest of this tier, none of it can start.
                continue;
            }
            if let Some(&(key, next)) = cursors[tier].next() {
                heads.push(Reverse((key, next, tier)));
            }
            let entry = self.queue.entry(slot);
            if !startable {
                claimed += 1;
                let projection = projection.get_or_insert_with(|| self.project(&free, now, &picks));
                self.claim_turn(entry, now, projection);
                continue;
            }
            looked_at += 1;
            if looked_at > self.policy.backfill_depth {
                break;
            }
            match self.choose_for(entry, &free, now, &mut projection, &picks, host_left) {
                Choice::Start { card, offload } => {
                    free.remove(&(self.cards[card].state.memory_total_bytes, card));
                    let demand = if offload {
                        entry.job.with_offload
                    } else {
                        Some(entry.job.no_offload)
                    };
                    if let (Some(left), Some(demand)) = (host_left.as_mut(), demand) {
                        *left = left.saturating_sub(demand.host_bytes);
                    }
                    let until = now.saturating_add(demand.map_or(Duration::ZERO, |d| d.est));
                    if let Some(projection) = projection.as_mut() {
                        projection.set(self.position_of[card], until);
                    }
                    picks.push(Pick {
                        slot,
                        card,
                        offload,
                        until,
                    });
                }
                Choice::Wait { wait_for, until } => {
                    if let Some(projection) = projection.as_mut() {
                        projection.set(wait_for, until);
                    }
                }
                Choice::NoFit => {
                    let projection =
                        projection.get_or_insert_with(|| self.project(&free, now, &picks));
                    self.claim_turn(entry, now, projection);
                }
            }
        }
        picks
    }

    /// A job that cannot start now takes, in the projection, the next turn of the card on
    /// which it would finish first, so the jobs behind it see that card as busy until then.
    /// Without this, a job behind a queue of big-card jobs would count on a big card it will
    /// not get, and wait for it instead of offloading.
    fn claim_turn(&self, entry: &Entry, now: Duration, projection: &mut Projection) {
        let best = [entry.job.plain_mode(), entry.job.offload_mode()]
            .into_iter()
            .flatten()
            .filter_map(|demand| {
                let from = self
                    .memory_of_position
                    .partition_point(|&bytes| bytes < demand.vram_bytes);
                let (free_at, position) = projection.earliest_from(from)?;
                Some((free_at.max(now).saturating_add(demand.est), position))
            })
            .min();
        if let Some((done, position)) = best {
            projection.set(position, done);
        }
    }

    /// The smallest free card of at least `bytes`: the job's preferred card first, then the
    /// smallest whose worker holds the job's `model`, then the smallest of all.
    fn best_free(
        &self,
        free: &BTreeSet<(u64, usize)>,
        bytes: u64,
        preferred: Option<usize>,
        model: Option<&str>,
    ) -> Option<usize> {
        if let Some(card) = preferred {
            let memory = self.cards[card].state.memory_total_bytes;
            if memory >= bytes && free.contains(&(memory, card)) {
                return Some(card);
            }
        }
        let mut fitting = free.range((bytes, 0)..).map(|&(_, card)| card);
        if let Some(model) = model {
            let warm = free
                .range((bytes, 0)..)
                .map(|&(_, card)| card)
                .find(|&card| self.cards[card].warm_model.as_deref() == Some(model));
            if warm.is_some() {
                return warm;
            }
        }
        fitting.next()
    }

    fn choose_for(
        &self,
        entry: &Entry,
        free: &BTreeSet<(u64, usize)>,
        now: Duration,
        projection: &mut Option<Projection>,
        picks: &[Pick],
        host_left: Option<u64>,
    ) -> Choice {
        let job = &entry.job;
        let preferred = job
            .preferred_card
            .as_deref()
            .and_then(|uuid| self.by_uuid.get(uuid).copied());
        // A mode whose host memory the running jobs leave no room for waits for one to end.
        let host_fits = |demand: &Demand| host_left.is_none_or(|left| demand.host_bytes <= left);
        let plain = job.plain_mode().filter(host_fits);
        if let Some(card) =
            plain.and_then(|d| self.best_free(free, d.vram_bytes, preferred, job.model.as_deref()))
        {
            return Choice::Start {
                card,
                offload: false,
            };
        }
        let Some(offload) = job.offload_mode().filter(host_fits) else {
            return Choice::NoFit;
        };
        let Some(card) = self.best_free(free, offload.vram_bytes, preferred, job.model.as_deref())
        else {
            return Choice::NoFit;
        };
        let start_now = Choice::Start {
            card,
            offload: true,
        };
        let Some(plain) = plain else {
            return start_now;
        };
        let projection = projection.get_or_insert_with(|| self.project(free, now, picks));
        self.wait_or_offload(entry, plain, offload, now, projection)
            .unwrap_or(start_now)
    }

    /// `Some(Wait)` when waiting for a card that fits `plain` finishes sooner than running
    /// `offload` now; `None` to start now.
    fn wait_or_offload(
        &self,
        entry: &Entry,
        plain: Demand,
        offload: Demand,
        now: Duration,
        projection: &Projection,
    ) -> Option<Choice> {
        let from = self
            .memory_of_position
            .partition_point(|&bytes| bytes < plain.vram_bytes);
        let (free_at, position) = projection.earliest_from(from)?;
        // An aged job does not wait on an overdue run: it may go on for any time.
        if entry.is_aged() && self.overdue(self.by_memory[position], now) {
            return None;
        }
        let plain_done = free_at.max(now).saturating_add(plain.est);
        let offload_done = now.saturating_add(offload.est);
        (plain_done < offload_done).then_some(Choice::Wait {
            wait_for: position,
            until: plain_done,
        })
    }

    /// Whether the card runs a job that has taken half again as long as its estimate. Runs
    /// often take a little longer than estimated, so only a clear overrun counts.
    fn overdue(&self, index: usize, now: Duration) -> bool {
        let card = &self.cards[index];
        let estimate = card.busy_until.saturating_sub(card.busy_since);
        card.state.leased_by.is_some()
            && now
                > card
                    .busy_until
                    .saturating_add(estimate.mul_f64(OVERDUE_FRACTION))
    }

    /// When each card (in memory order) is expected free: now for free cards, the running
    /// job's expected end for busy ones (now if overdue), never for unusable ones.
    fn project(&self, free: &BTreeSet<(u64, usize)>, now: Duration, picks: &[Pick]) -> Projection {
        let mut free_at: Vec<Duration> = self
            .by_memory
            .iter()
            .map(|&index| {
                let card = &self.cards[index];
                if !card.state.usable() {
                    NEVER
                } else if free.contains(&(card.state.memory_total_bytes, index)) {
                    now
                } else {
                    card.busy_until.max(now)
                }
            })
            .collect();
        for pick in picks {
            free_at[self.position_of[pick.card]] = pick.until;
        }
        Projection::new(&free_at)
    }

    fn start(&mut self, pick: Pick, now: Duration) -> Placement {
        let entry = self.queue.remove_slot(pick.slot);
        let demand = if pick.offload {
            entry.job.with_offload.unwrap_or(entry.job.no_offload)
        } else {
            entry.job.no_offload
        };
        let card = &mut self.cards[pick.card];
        card.state.leased_by = Some(entry.job.id.clone());
        card.busy_since = now;
        card.busy_until = pick.until;
        let placement = Placement {
            job_id: entry.job.id.clone(),
            card_uuid: card.state.uuid.clone(),
            offload_used: pick.offload,
            vram_bytes: demand.vram_bytes,
        };
        self.refresh_free(pick.card);
        tracing::debug!(
            job = %placement.job_id,
            card = %placement.card_uuid,
            offload = placement.offload_used,
            waited_secs = now.saturating_sub(entry.enqueued_at).as_secs(),
            "placing job"
        );
        self.running.insert(
            entry.job.id.clone(),
            Running {
                job: Some(entry.job),
                card: pick.card,
                offload_used: pick.offload,
                enqueued_at: entry.enqueued_at,
            },
        );
        placement
    }
}
