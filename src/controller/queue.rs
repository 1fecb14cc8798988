//! The work queue: each key at most once pending and once in flight; a key added while in
//! flight is marked dirty and runs again when it finishes; a failed run comes back after a
//! growing delay, a done one forgets its failures. Pure bookkeeping: the caller sends what
//! `add` admits to its workers and sleeps what `finish` asks for.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::Duration;

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    Done,
    /// Something failed that may work later: run the key again after a backoff.
    Retry,
}

/// The wait before the `attempt`-th retry (1-based): 1 s, doubling, at most 30 s.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// What to do once a run has finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct After {
    /// Added again while it ran: send it to the workers now.
    pub again: bool,
    /// Failed: add it again after this delay (and how many attempts failed in a row).
    pub retry: Option<(Duration, u32)>,
}

#[derive(Debug)]
pub struct WorkQueue<W> {
    pending: HashSet<W>,
    in_flight: HashSet<W>,
    dirty: HashSet<W>,
    attempts: HashMap<W, u32>,
}

impl<W> Default for WorkQueue<W> {
    fn default() -> Self {
        WorkQueue { pending: HashSet::new(), in_flight: HashSet::new(), dirty: HashSet::new(), attempts: HashMap::new() }
    }
}

impl<W: Clone + Eq + Hash> WorkQueue<W> {
    /// Adds a key; true when the caller must send it to the workers (it was neither pending
    /// nor in flight).
    pub fn add(&mut self, w: W) -> bool {
        if self.in_flight.contains(&w) {
            self.dirty.insert(w);
            false
        } else {
            self.pending.insert(w)
        }
    }

    /// A worker takes the key.
    pub fn start(&mut self, w: &W) {
        self.pending.remove(w);
        self.in_flight.insert(w.clone());
    }

    /// A worker is done with the key.
    pub fn finish(&mut self, w: &W, settled: Settled) -> After {
        self.in_flight.remove(w);
        let retry = match settled {
            Settled::Done => {
                self.attempts.remove(w);
                None
            }
            Settled::Retry => {
                let attempt = self.attempts.entry(w.clone()).or_default();
                *attempt += 1;
                Some((retry_delay(*attempt), *attempt))
            }
        };
        let again = self.dirty.remove(w) && self.add(w.clone());
        After { again, retry }
    }

    /// Keys waiting or running.
    pub fn len(&self) -> usize {
        self.pending.len() + self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_thirty_seconds() {
        let secs: Vec<u64> = (1..=8).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_delay(0).as_secs(), 1);
        assert_eq!(retry_delay(u32::MAX).as_secs(), 30);
    }

    #[test]
    fn a_key_is_pending_once_and_runs_again_if_added_while_running() {
        let mut q = WorkQueue::default();
        assert!(q.add("a"));
        assert!(!q.add("a"), "already pending: not sent twice");
        q.start(&"a");
        assert!(!q.add("a"), "in flight: marked dirty, not sent");
        assert!(!q.add("a"));
        assert_eq!(q.finish(&"a", Settled::Done), After { again: true, retry: None });
        q.start(&"a");
        assert_eq!(q.finish(&"a", Settled::Done), After { again: false, retry: None });
        assert!(q.is_empty());
        assert!(q.add("a"), "finished: can be sent again");
    }

    #[test]
    fn failures_back_off_until_a_run_succeeds() {
        let mut q = WorkQueue::default();
        let mut delays = Vec::new();
        for _ in 0..3 {
            q.add("r");
            q.start(&"r");
            delays.push(q.finish(&"r", Settled::Retry).retry.map(|(d, n)| (d.as_secs(), n)));
        }
        assert_eq!(delays, vec![Some((1, 1)), Some((2, 2)), Some((4, 3))]);
        q.add("r");
        q.start(&"r");
        assert_eq!(q.finish(&"r", Settled::Done).retry, None);
        q.add("r");
        q.start(&"r");
        assert_eq!(q.finish(&"r", Settled::Retry).retry, Some((Duration::from_secs(1), 1)), "a success resets the backoff");
        // Other keys have their own count.
        q.add("s");
        q.start(&"s");
        assert_eq!(q.finish(&"s", Settled::Retry).retry, Some((Duration::from_secs(1), 1)));
    }
}
