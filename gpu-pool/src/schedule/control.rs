//! Everything but the placement decision: building the scheduler, jobs coming and going,
//! runs ending, cards changing state.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use super::queue::JobQueue;
use super::{
    Card, CardState, OomFallback, QueuedJob, Refusal, Released, RunOutcome, Running, Scheduler,
    SchedulerPolicy,
};
use crate::discover::GIB;
use crate::profile::OffloadChoice;
use crate::PoolError;

impl Scheduler {
    /// A scheduler over `cards`. Cards given with `leased_by` count as running that job
    /// (release it like any other); their expected end is unknown and taken as now.
    pub fn new(cards: Vec<CardState>, policy: SchedulerPolicy) -> Result<Scheduler, PoolError> {
        let mut by_uuid = HashMap::new();
        for (index, card) in cards.iter().enumerate() {
            if by_uuid.insert(card.uuid.clone(), index).is_some() {
                return Err(PoolError::Config {
                    message: format!("two cards have the UUID `{}`", card.uuid),
                });
            }
        }
        let mut by_memory: Vec<usize> = (0..cards.len()).collect();
        by_memory.sort_by_key(|&index| (cards[index].memory_total_bytes, index));
        let memory_of_position: Vec<u64> = by_memory
            .iter()
            .map(|&index| cards[index].memory_total_bytes)
            .collect();
        let mut position_of = vec![0; cards.len()];
        for (position, &index) in by_memory.iter().enumerate() {
            position_of[index] = position;
        }
        let mut tier_bytes = memory_of_position.clone();
        tier_bytes.dedup();
        let mut scheduler = Scheduler {
            policy,
            cards: Vec::with_capacity(cards.len()),
            by_uuid,
            by_memory,
            memory_of_position,
            position_of,
            queue: JobQueue::new(tier_bytes.len()),
            tier_bytes,
            free: BTreeSet::new(),
            running: HashMap::new(),
            host_memory_bytes: None,
        };
        for (index, state) in cards.into_iter().enumerate() {
            if let Some(job) = &state.leased_by {
                scheduler.running.insert(
                    job.clone(),
                    Running {
                        job: None,
                        card: index,
                        offload_used: false,
                        enqueued_at: Duration::ZERO,
                    },
                );
            } else if state.usable() {
                scheduler.free.insert((state.memory_total_bytes, index));
            }
            scheduler.cards.push(Card {
                state,
                busy_since: Duration::ZERO,
                busy_until: Duration::ZERO,
                consecutive_failures: 0,
                warm_model: None,
            });
        }
        Ok(scheduler)
    }

    /// Makes the host's memory a placement resource: jobs whose `host_bytes` together exceed
    /// `bytes` do not run side by side. `None` (the default) leaves host memory uncounted.
    pub fn set_host_memory(&mut self, bytes: Option<u64>) {
        self.host_memory_bytes = bytes;
    }

    /// Host memory the running jobs hold, by the demand of the mode each runs in.
    pub fn host_bytes_in_use(&self) -> u64 {
        self.running
            .values()
            .filter_map(|run| {
                let job = run.job.as_ref()?;
                let demand = if run.offload_used {
                    job.with_offload.unwrap_or(job.no_offload)
                } else {
                    job.no_offload
                };
                Some(demand.host_bytes)
            })
            .sum()
    }

    /// The biggest card of the pool, drained and unhealthy ones included (they may come back).
    pub fn largest_card_bytes(&self) -> u64 {
        self.tier_bytes.last().copied().unwrap_or(0)
    }

    /// Whether `job` fits some card of the pool in a mode it allows; if not, why, with a
    /// suggestion. For a suggestion that names a size or frame count, pass the refusal
    /// through [`Refusal::with_profile_hint`].
    pub fn admit(&self, job: &QueuedJob) -> Result<(), Refusal> {
        let largest_card_bytes = self.largest_card_bytes();
        let estimate_bytes = job.min_vram_bytes();
        if estimate_bytes <= largest_card_bytes {
            return Ok(());
        }
        let gib = |bytes: u64| bytes as f64 / GIB as f64;
        let suggestion = match job.with_offload {
            Some(offload)
                if job.offload == OffloadChoice::Off && offload.vram_bytes <= largest_card_bytes =>
            {
                format!(
                    "set `offload: true`: with offload it needs {:.1} GiB (it runs slower)",
                    gib(offload.vram_bytes)
                )
            }
            _ => format!(
                "lower pixels × frames (a smaller `size` or fewer `infer_frames`) until the estimate \
                 is under {:.1} GiB, or use a template made for small cards",
                gib(largest_card_bytes)
            ),
        };
        Err(Refusal {
            estimate_bytes,
            largest_card_bytes,
            suggestion,
        })
    }

    /// Queues a job at time `now` (which starts its aging clock).
    pub fn enqueue(&mut self, job: QueuedJob, now: Duration) -> Result<(), PoolError> {
        self.enqueue_since(job, now)
    }

    fn enqueue_since(&mut self, job: QueuedJob, enqueued_at: Duration) -> Result<(), PoolError> {
        if self.queue.contains(&job.id) || self.running.contains_key(&job.id) {
            return Err(PoolError::DuplicateJob { id: job.id });
        }
        if let Err(refusal) = self.admit(&job) {
            return Err(PoolError::Refused {
                id: job.id,
                refusal: Box::new(refusal),
            });
        }
        let need = job.min_vram_bytes();
        let tier = self.tier_bytes.partition_point(|&bytes| bytes < need);
        self.queue.insert(job, enqueued_at, tier, false);
        Ok(())
    }

    /// Takes a waiting job out of the queue; `false` when it is not queued (a running job is
    /// stopped by the daemon and then released).
    pub fn cancel(&mut self, job_id: &str) -> bool {
        self.queue.remove(job_id).is_some()
    }

    /// Ends a run: frees the card and counts failures. `Failed` runs in a row drain the card
    /// at the policy's threshold; a `Finished` run restarts the count.
    pub fn release(&mut self, job_id: &str, outcome: RunOutcome) -> Result<Released, PoolError> {
        let running = self.take_running(job_id)?;
        let threshold = self.policy.failure_drain_threshold.max(1);
        let card = &mut self.cards[running.card];
        match outcome {
            RunOutcome::Finished => card.consecutive_failures = 0,
            RunOutcome::Failed => card.consecutive_failures += 1,
            RunOutcome::Interrupted => {}
        }
        let drained_now = card.consecutive_failures >= threshold && !card.state.drained;
        if drained_now {
            card.state.drained = true;
            tracing::warn!(
                card = %card.state.uuid,
                failures = card.consecutive_failures,
                "draining card after consecutive failed runs; undrain it once checked"
            );
        }
        let released = Released {
            card_uuid: card.state.uuid.clone(),
            consecutive_failures: card.consecutive_failures,
            drained_now,
        };
        self.refresh_free(running.card);
        Ok(released)
    }

    /// A running job ran out of GPU memory: frees its card (not counted as the card's
    /// failure) and says what to try next. Offload comes first: the job goes back in line,
    /// at its old place, to run with offload. Then fewer frames, if the job allows it.
    pub fn record_oom(&mut self, job_id: &str) -> Result<OomFallback, PoolError> {
        let running = self.take_running(job_id)?;
        self.refresh_free(running.card);
        let Some(mut job) = running.job else {
            return Ok(OomFallback::GiveUp);
        };
        let offload_fits = job
            .with_offload
            .is_some_and(|d| d.vram_bytes <= self.largest_card_bytes());
        if !running.offload_used && job.offload != OffloadChoice::Off && offload_fits {
            job.offload = OffloadChoice::On;
            self.enqueue_since(job, running.enqueued_at)?;
            return Ok(OomFallback::OffloadOn);
        }
        Ok(if job.may_reduce_frames {
            OomFallback::FewerFrames
        } else {
            OomFallback::GiveUp
        })
    }

    fn take_running(&mut self, job_id: &str) -> Result<Running, PoolError> {
        let running = self
            .running
            .remove(job_id)
            .ok_or_else(|| PoolError::UnknownJob {
                id: job_id.to_string(),
                state: "running",
            })?;
        self.cards[running.card].state.leased_by = None;
        Ok(running)
    }

    /// Puts a card in or out of the free set after any change to it.
    pub(super) fn refresh_free(&mut self, index: usize) {
        let card = &self.cards[index];
        let key = (card.state.memory_total_bytes, index);
        if card.state.usable() && card.state.leased_by.is_none() {
            self.free.insert(key);
        } else {
            self.free.remove(&key);
        }
    }

    fn card_index(&self, uuid: &str) -> Result<usize, PoolError> {
        self.by_uuid
            .get(uuid)
            .copied()
            .ok_or_else(|| PoolError::UnknownCard {
                uuid: uuid.to_string(),
            })
    }

    /// Notes which model the card's worker holds loaded (`None`: no worker). A job of that
    /// model prefers the card among the free ones it fits (see [`QueuedJob::model`]).
    pub fn set_warm_model(&mut self, uuid: &str, model: Option<String>) -> Result<(), PoolError> {
        let index = self.card_index(uuid)?;
        self.cards[index].warm_model = model;
        Ok(())
    }

    /// Takes a card out of placement; a job running there keeps running.
    pub fn drain(&mut self, uuid: &str) -> Result<(), PoolError> {
        let index = self.card_index(uuid)?;
        self.cards[index].state.drained = true;
        self.refresh_free(index);
        Ok(())
    }

    /// Puts a drained card back and forgets its failures.
    pub fn undrain(&mut self, uuid: &str) -> Result<(), PoolError> {
        let index = self.card_index(uuid)?;
        let card = &mut self.cards[index];
        card.state.drained = false;
        card.consecutive_failures = 0;
        self.refresh_free(index);
        Ok(())
    }

    /// Records what the latest health check said about a card.
    pub fn set_healthy(&mut self, uuid: &str, healthy: bool) -> Result<(), PoolError> {
        let index = self.card_index(uuid)?;
        self.cards[index].state.healthy = healthy;
        self.refresh_free(index);
        Ok(())
    }

    /// The cards, in the order given to [`Scheduler::new`].
    pub fn cards(&self) -> impl Iterator<Item = &CardState> {
        self.cards.iter().map(|card| &card.state)
    }

    /// Number of waiting jobs.
    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// Whether `job_id` is waiting.
    pub fn is_queued(&self, job_id: &str) -> bool {
        self.queue.contains(job_id)
    }

    /// Number of running jobs.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// The card `job_id` runs on.
    pub fn card_of(&self, job_id: &str) -> Option<&str> {
        self.running
            .get(job_id)
            .map(|running| self.cards[running.card].state.uuid.as_str())
    }

    /// The policy in force.
    pub fn policy(&self) -> &SchedulerPolicy {
        &self.policy
    }
}
