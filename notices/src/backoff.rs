//! When to try a failed delivery again.
//!
//! Exponential backoff spaces the attempts so a receiver that is down for
//! hours is not hammered; the jitter spreads the retries of many notices
//! that failed together (a receiver outage) so they do not all return in
//! the same millisecond. We use "equal jitter": half the delay is fixed,
//! half random, so a retry never comes much sooner than planned.
//!
//! Retries go on until `retry_for` after the notice was queued. The last
//! attempt is placed exactly at that deadline rather than skipped, so a
//! receiver that comes back within the window always gets its notice.

use std::time::Duration;

use crate::NoticeConfig;

/// The retry policy of a dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetrySchedule {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
    pub(crate) retry_for: Duration,
}

impl RetrySchedule {
    pub(crate) fn from_config(config: &NoticeConfig) -> RetrySchedule {
        RetrySchedule {
            initial: config.backoff_initial(),
            max: config.backoff_max(),
            retry_for: config.retry_for,
        }
    }

    /// The delay ceiling after `failed_attempts` failures (1 for the first):
    /// `initial`, doubled per further failure, capped at `max`.
    pub(crate) fn ceiling(&self, failed_attempts: u32) -> Duration {
        let doublings = failed_attempts.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// When to try again after `failed_attempts` failures, in ms since the
    /// epoch, or `None` when the retry window is over.
    ///
    /// `at_least` is a delay the receiver asked for (`Retry-After`); it
    /// replaces the backoff delay when longer. `random_half` draws the
    /// jitter: a number of milliseconds in `0..=bound`.
    pub(crate) fn next_attempt_at_ms(
        &self,
        created_at_ms: u64,
        now_ms: u64,
        failed_attempts: u32,
        at_least: Option<Duration>,
        random_half: impl FnOnce(u64) -> u64,
    ) -> Option<u64> {
        let deadline = created_at_ms.saturating_add(millis(self.retry_for));
        if now_ms >= deadline {
            return None;
        }
        let ceiling = millis(self.ceiling(failed_attempts));
        let half = ceiling / 2;
        let mut delay = ceiling - half + random_half(half).min(half);
        if let Some(asked) = at_least {
            delay = delay.max(millis(asked));
        }
        Some(now_ms.saturating_add(delay.max(1)).min(deadline))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60),
            retry_for: Duration::from_secs(3600),
        }
    }

    #[test]
    fn ceiling_doubles_then_stops_at_max() {
        let s = schedule();
        let secs: Vec<u64> = (1..=8).map(|n| s.ceiling(n).as_secs()).collect();
        assert_eq!(secs, vec![2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(s.ceiling(10_000), Duration::from_secs(60));
    }

    #[test]
    fn delay_lies_between_half_and_all_of_the_ceiling() {
        let s = schedule();
        let earliest = s.next_attempt_at_ms(0, 1_000, 3, None, |_| 0);
        let latest = s.next_attempt_at_ms(0, 1_000, 3, None, |bound| bound);
        assert_eq!(earliest, Some(1_000 + 4_000));
        assert_eq!(latest, Some(1_000 + 8_000));
    }

    #[test]
    fn retry_after_from_the_receiver_wins_when_longer() {
        let s = schedule();
        let next = s.next_attempt_at_ms(0, 0, 1, Some(Duration::from_secs(30)), |_| 0);
        assert_eq!(next, Some(30_000));
    }

    #[test]
    fn last_attempt_is_placed_at_the_deadline() {
        let s = schedule();
        let next = s.next_attempt_at_ms(0, 3_599_000, 20, None, |bound| bound);
        assert_eq!(next, Some(3_600_000));
    }

    #[test]
    fn gives_up_once_the_window_is_over() {
        let s = schedule();
        assert_eq!(s.next_attempt_at_ms(0, 3_600_000, 21, None, |_| 0), None);
    }
}
