//! When each card is expected to be free, for the "wait or offload now?" decision.
//!
//! Cards are kept in ascending memory order, so "the cards that fit this job" is always a
//! suffix; a min segment tree answers "the earliest of those to be free, and which" in
//! O(log cards), and a reservation (a waiting job claiming that card's next turn) is one
//! O(log cards) update.

use std::time::Duration;

/// Never free: drained, unhealthy, or nothing to project.
pub(super) const NEVER: Duration = Duration::MAX;

pub(super) struct Projection {
    leaves: usize,
    /// `tree[leaves + pos]` holds card position `pos`; inner nodes hold the min of children.
    tree: Vec<(Duration, usize)>,
}

impl Projection {
    /// `free_at[pos]` is when the card at memory-order position `pos` is expected free.
    pub fn new(free_at: &[Duration]) -> Projection {
        let leaves = free_at.len().next_power_of_two().max(1);
        let mut tree = vec![(NEVER, usize::MAX); 2 * leaves];
        for (pos, &at) in free_at.iter().enumerate() {
            tree[leaves + pos] = (at, pos);
        }
        for node in (1..leaves).rev() {
            tree[node] = tree[2 * node].min(tree[2 * node + 1]);
        }
        Projection { leaves, tree }
    }

    pub fn set(&mut self, pos: usize, at: Duration) {
        let mut node = self.leaves + pos;
        self.tree[node] = (at, pos);
        while node > 1 {
            node /= 2;
            self.tree[node] = self.tree[2 * node].min(self.tree[2 * node + 1]);
        }
    }

    /// The earliest expected free time among positions `from..`, and its position; ties go to
    /// the smaller card. `None` when none of them will ever be free.
    pub fn earliest_from(&self, from: usize) -> Option<(Duration, usize)> {
        let mut best = (NEVER, usize::MAX);
        let (mut lo, mut hi) = (self.leaves + from, 2 * self.leaves);
        while lo < hi {
            if lo % 2 == 1 {
                best = best.min(self.tree[lo]);
                lo += 1;
            }
            if hi % 2 == 1 {
                hi -= 1;
                best = best.min(self.tree[hi]);
            }
            lo /= 2;
            hi /= 2;
        }
        (best.0 != NEVER).then_some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn earliest_looks_only_at_the_suffix() {
        let projection = Projection::new(&[secs(1), secs(9), secs(5)]);
        assert_eq!(projection.earliest_from(0), Some((secs(1), 0)));
        assert_eq!(projection.earliest_from(1), Some((secs(5), 2)));
        assert_eq!(projection.earliest_from(3), None);
    }

    #[test]
    fn updates_move_the_minimum() {
        let mut projection = Projection::new(&[secs(1), secs(9), secs(5)]);
        projection.set(2, secs(20));
        assert_eq!(projection.earliest_from(1), Some((secs(9), 1)));
    }

    #[test]
    fn never_free_cards_are_not_offered() {
        let projection = Projection::new(&[NEVER, NEVER]);
        assert_eq!(projection.earliest_from(0), None);
    }

    #[test]
    fn ties_go_to_the_smaller_card() {
        let projection = Projection::new(&[secs(3), secs(3), secs(3)]);
        assert_eq!(projection.earliest_from(1), Some((secs(3), 1)));
    }
}
