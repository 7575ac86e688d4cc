//! The waiting jobs, indexed for fast placement decisions.
//!
//! Jobs are split by *tier*: the smallest distinct card size they fit (in their smallest
//! allowed mode). Within a tier they are kept in placement order in a `BTreeSet`, and a pass
//! merges the tiers in that order. Every job of a tier up to the largest free card's fits a
//! free card, and the jobs of bigger tiers are read only to project waiting times (a bounded
//! number of them): with 100,000 queued jobs a decision still touches a handful of entries.
//! A second ordered set, by enqueue time, finds the jobs that have waited past the aging
//! bound without scanning the queue.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use super::QueuedJob;

/// A job's place in line. Aged jobs come before all others (oldest submission first), then
/// higher priority, then earlier submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum OrderKey {
    Aged { seq: u64 },
    Normal { priority: Reverse<i32>, seq: u64 },
}

/// Index of a job in the slab.
pub(super) type Slot = u32;

#[derive(Debug)]
pub(super) struct Entry {
    pub job: QueuedJob,
    pub enqueued_at: Duration,
    pub tier: usize,
    pub key: OrderKey,
}

impl Entry {
    pub fn is_aged(&self) -> bool {
        matches!(self.key, OrderKey::Aged { .. })
    }
}

#[derive(Debug, Default)]
pub(super) struct JobQueue {
    slots: Vec<Option<Entry>>,
    vacant: Vec<Slot>,
    ids: HashMap<String, Slot>,
    /// Per tier, the jobs in placement order.
    tiers: Vec<BTreeSet<(OrderKey, Slot)>>,
    /// Jobs not yet aged, by enqueue time.
    by_age: BTreeSet<(Duration, u64, Slot)>,
}

impl JobQueue {
    pub fn new(tier_count: usize) -> JobQueue {
        JobQueue {
            tiers: vec![BTreeSet::new(); tier_count],
            ..JobQueue::default()
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    pub fn entry(&self, slot: Slot) -> &Entry {
        self.slots[slot as usize]
            .as_ref()
            .expect("invariant: every slot in an index holds a job")
    }

    /// The jobs of one tier, in placement order.
    pub fn tier(&self, tier: usize) -> &BTreeSet<(OrderKey, Slot)> {
        &self.tiers[tier]
    }

    /// Adds a job; the caller has checked that its id is new.
    pub fn insert(&mut self, job: QueuedJob, enqueued_at: Duration, tier: usize, aged: bool) {
        let seq = job.seq;
        let key = if aged {
            OrderKey::Aged { seq }
        } else {
            OrderKey::Normal {
                priority: Reverse(job.priority),
                seq,
            }
        };
        let id = job.id.clone();
        let entry = Entry {
            job,
            enqueued_at,
            tier,
            key,
        };
        let slot = match self.vacant.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                let slot = Slot::try_from(self.slots.len())
                    .expect("invariant: fewer than 4 billion queued jobs");
                self.slots.push(Some(entry));
                slot
            }
        };
        self.tiers[tier].insert((key, slot));
        if !aged {
            self.by_age.insert((enqueued_at, seq, slot));
        }
        self.ids.insert(id, slot);
    }

    pub fn remove(&mut self, id: &str) -> Option<Entry> {
        let slot = self.ids.get(id).copied()?;
        Some(self.remove_slot(slot))
    }

    pub fn remove_slot(&mut self, slot: Slot) -> Entry {
        let entry = self.slots[slot as usize]
            .take()
            .expect("invariant: removing a slot that holds a job");
        self.tiers[entry.tier].remove(&(entry.key, slot));
        if !entry.is_aged() {
            self.by_age
                .remove(&(entry.enqueued_at, entry.job.seq, slot));
        }
        self.ids.remove(&entry.job.id);
        self.vacant.push(slot);
        entry
    }

    /// Moves every job enqueued at or before `now - max_wait` to the front of its tier.
    pub fn promote_aged(&mut self, now: Duration, max_wait: Duration) {
        while let Some(&(at, seq, slot)) = self.by_age.first() {
            if at.saturating_add(max_wait) > now {
                break;
            }
            self.by_age.pop_first();
            let entry = self.slots[slot as usize]
                .as_mut()
                .expect("invariant: the age index only holds live slots");
            self.tiers[entry.tier].remove(&(entry.key, slot));
            entry.key = OrderKey::Aged { seq };
            self.tiers[entry.tier].insert((entry.key, slot));
            tracing::debug!(job = %entry.job.id, "job waited past the aging bound; it now goes first");
        }
    }
}
