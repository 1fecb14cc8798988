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
    /// Runs finished since the queue was made.
    finished: u64,
}

impl<W> Default for WorkQueue<W> {
    fn default() -> Self {
        WorkQueue { pending: HashSet::new(), in_flight: HashSet::new(), dirty: HashSet::new(), attempts: HashMap::new(), finished: 0 }
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
        self.finished += 1;
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

    /// Runs finished since the queue was made.
    pub fn finished(&self) -> u64 {
        self.finished
    }
}

/// Whether to hand the allocator's free pages back to the system now ([`crate::memory`]): once
/// the queue has been idle for `settle` after a burst of work (a cold scan, a full pass, a storm
/// of edits; `settle` lets what the burst left behind, such as its listings, be dropped first),
/// or after any work at most once a minute. A lone edit's reconcile does not trim at once: a
/// trim walks the whole heap.
pub fn trim_due(idle_for: Option<Duration>, settle: Duration, finished_since: u64, since_last: Duration) -> bool {
    idle_for.is_some_and(|idle| idle >= settle) && (finished_since >= 64 || (finished_since > 0 && since_last >= Duration::from_secs(60)))
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
    fn memory_is_handed_back_when_a_burst_is_over() {
        let (s, ten, m) = (Duration::from_secs(1), Duration::from_secs(10), Duration::from_secs(60));
        assert!(trim_due(Some(ten), ten, 1000, s), "a cold scan ended, its listings dropped");
        assert!(!trim_due(Some(s), ten, 1000, s), "its listings are not dropped yet");
        assert!(!trim_due(None, ten, 1000, m), "still working: the freed pages would be taken again");
        assert!(!trim_due(Some(m), ten, 3, s), "a few edits: not yet");
        assert!(trim_due(Some(m), ten, 3, m), "a few edits, a minute later");
        assert!(!trim_due(Some(m), ten, 0, m), "nothing ran: nothing to give back (idle costs nothing)");
        let mut q = WorkQueue::default();
        q.add("a");
        q.start(&"a");
        q.finish(&"a", Settled::Retry);
        q.add("b");
        q.start(&"b");
        q.finish(&"b", Settled::Done);
        assert_eq!(q.finished(), 2, "failed runs count: they allocated too");
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
