//! The work queue: each key at most once pending and once in flight; a key added while in
//! flight is marked dirty and runs again when it finishes; a failed run comes back after a
//! growing delay, a done one forgets its failures. Two lanes: what a watch saw change goes
//! [`Lane::Now`], ahead of a full pass's thousands of unchanged releases ([`Lane::Later`]), so
//! an edit is not checked after the whole fleet. Pure bookkeeping: the caller sends what `add`
//! admits to its workers on the lane it names, takes `Now` first, and sleeps what `finish`
//! asks for.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

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
    /// Added again while it ran: send it to the workers now, on this lane (`Now` if any of the
    /// adds wanted it now).
    pub again: Option<Lane>,
    /// Failed: add it again after this delay (and how many attempts failed in a row).
    pub retry: Option<(Duration, u32)>,
}

/// Which of the workers' two channels a key is sent on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// A change to look at: before anything on `Later`.
    Now,
    /// A full pass (the cold scan, the periodic re-check).
    Later,
}

#[derive(Debug)]
pub struct WorkQueue<W> {
    /// The pending keys, with when they were wanted (on the lane they wait on).
    pending: HashMap<W, Instant>,
    /// The pending keys sent on [`Lane::Later`] only.
    later: HashSet<W>,
    in_flight: HashSet<W>,
    /// In flight and added again meanwhile, with the lane it was wanted on and since when.
    dirty: HashMap<W, (Lane, Instant)>,
    attempts: HashMap<W, u32>,
    /// Runs finished since the queue was made.
    finished: u64,
}

impl<W> Default for WorkQueue<W> {
    fn default() -> Self {
        WorkQueue { pending: HashMap::new(), later: HashSet::new(), in_flight: HashSet::new(), dirty: HashMap::new(), attempts: HashMap::new(), finished: 0 }
    }
}

impl<W: Clone + Eq + Hash> WorkQueue<W> {
    /// Adds a key on a lane, wanted since `now`; the lane the caller must send it on, if any:
    /// when it was neither pending nor in flight, or when it waits on `Later` and is now wanted
    /// `Now` (sent again; the copy left on `Later` is stale, see [`WorkQueue::start`]).
    pub fn add(&mut self, w: W, lane: Lane, now: Instant) -> Option<Lane> {
        if self.in_flight.contains(&w) {
            let wanted = self.dirty.entry(w).or_insert((lane, now));
            if lane == Lane::Now && wanted.0 == Lane::Later {
                *wanted = (Lane::Now, now);
            }
            None
        } else if let Some(since) = self.pending.get_mut(&w) {
            // Wanted now: its wait starts now, not with the pass it was part of.
            let sooner = lane == Lane::Now && self.later.remove(&w);
            if sooner {
                *since = now;
            }
            sooner.then_some(Lane::Now)
        } else {
            if lane == Lane::Later {
                self.later.insert(w.clone());
            }
            self.pending.insert(w, now);
            Some(lane)
        }
    }

    /// A worker takes the key at `now`: the lane it waited on and how long, or None when it is
    /// not pending (a stale copy from the other lane: it ran already or is running), and the
    /// worker drops it.
    pub fn start(&mut self, w: &W, now: Instant) -> Option<(Lane, Duration)> {
        let since = self.pending.remove(w)?;
        let lane = if self.later.remove(w) { Lane::Later } else { Lane::Now };
        self.in_flight.insert(w.clone());
        Some((lane, now.saturating_duration_since(since)))
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
        let again = self.dirty.remove(w).and_then(|(lane, since)| self.add(w.clone(), lane, since));
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
        let (mut q, t0) = (WorkQueue::default(), Instant::now());
        assert_eq!(q.add("a", Lane::Now, t0), Some(Lane::Now));
        assert_eq!(q.add("a", Lane::Now, t0), None, "already pending: not sent twice");
        assert!(q.start(&"a", t0).is_some());
        assert_eq!(q.add("a", Lane::Now, t0), None, "in flight: marked dirty, not sent");
        assert_eq!(q.add("a", Lane::Later, t0), None);
        assert_eq!(q.finish(&"a", Settled::Done), After { again: Some(Lane::Now), retry: None });
        assert!(q.start(&"a", t0).is_some());
        assert_eq!(q.finish(&"a", Settled::Done), After { again: None, retry: None });
        assert!(q.is_empty());
        assert_eq!(q.add("a", Lane::Now, t0), Some(Lane::Now), "finished: can be sent again");
    }

    #[test]
    fn a_change_overtakes_a_full_pass() {
        let (mut q, t0) = (WorkQueue::default(), Instant::now());
        for k in ["a", "b", "c"] {
            assert_eq!(q.add(k, Lane::Later, t0), Some(Lane::Later));
        }
        assert_eq!(q.add("b", Lane::Later, t0), None, "pending on Later already");
        assert_eq!(q.add("b", Lane::Now, t0), Some(Lane::Now), "a change to a key of the pass: sent again, on Now");
        assert_eq!(q.add("b", Lane::Now, t0), None, "once");
        assert_eq!(q.add("d", Lane::Now, t0), Some(Lane::Now));
        // The workers take Now first: b, d; then the pass: a, b (stale: dropped), c.
        assert!(q.start(&"b", t0).is_some());
        q.finish(&"b", Settled::Done);
        assert!(q.start(&"d", t0).is_some());
        assert!(q.start(&"a", t0).is_some());
        assert!(q.start(&"b", t0).is_none(), "b's copy on Later is stale: it ran");
        assert!(q.start(&"c", t0).is_some());
        assert_eq!(q.len(), 3, "d, a and c in flight");
        assert_eq!(q.add("a", Lane::Now, t0), None, "in flight: dirty");
        assert_eq!(q.finish(&"a", Settled::Done).again, Some(Lane::Now), "and runs again at once");
        // Added again while running by a pass only: runs again after the pass's others.
        assert_eq!(q.add("c", Lane::Later, t0), None);
        assert_eq!(q.finish(&"c", Settled::Done).again, Some(Lane::Later));
    }

    #[test]
    fn a_key_waits_from_when_it_was_wanted_on_its_lane() {
        let (mut q, t0) = (WorkQueue::default(), Instant::now());
        let s = Duration::from_secs;
        q.add("a", Lane::Later, t0);
        q.add("a", Lane::Later, t0 + s(1));
        assert_eq!(q.start(&"a", t0 + s(5)), Some((Lane::Later, s(5))), "a pass's key waits from the pass");
        q.add("b", Lane::Later, t0);
        q.add("b", Lane::Now, t0 + s(4));
        assert_eq!(q.start(&"b", t0 + s(5)), Some((Lane::Now, s(1))), "a change to it: from the change, not the pass");
        q.add("b", Lane::Later, t0 + s(6));
        q.add("b", Lane::Now, t0 + s(7));
        q.add("b", Lane::Now, t0 + s(8));
        assert_eq!(q.finish(&"b", Settled::Done).again, Some(Lane::Now));
        assert_eq!(q.start(&"b", t0 + s(10)), Some((Lane::Now, s(3))), "added while it ran: from the first change");
        assert_eq!(q.start(&"b", t0 + s(11)), None);
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
        let (mut q, t0) = (WorkQueue::default(), Instant::now());
        q.add("a", Lane::Now, t0);
        q.start(&"a", t0);
        q.finish(&"a", Settled::Retry);
        q.add("b", Lane::Now, t0);
        q.start(&"b", t0);
        q.finish(&"b", Settled::Done);
        assert_eq!(q.finished(), 2, "failed runs count: they allocated too");
    }

    #[test]
    fn failures_back_off_until_a_run_succeeds() {
        let (mut q, t0) = (WorkQueue::default(), Instant::now());
        let mut delays = Vec::new();
        for _ in 0..3 {
            q.add("r", Lane::Now, t0);
            q.start(&"r", t0);
            delays.push(q.finish(&"r", Settled::Retry).retry.map(|(d, n)| (d.as_secs(), n)));
        }
        assert_eq!(delays, vec![Some((1, 1)), Some((2, 2)), Some((4, 3))]);
        q.add("r", Lane::Now, t0);
        q.start(&"r", t0);
        assert_eq!(q.finish(&"r", Settled::Done).retry, None);
        q.add("r", Lane::Now, t0);
        q.start(&"r", t0);
        assert_eq!(q.finish(&"r", Settled::Retry).retry, Some((Duration::from_secs(1), 1)), "a success resets the backoff");
        // Other keys have their own count.
        q.add("s", Lane::Now, t0);
        q.start(&"s", t0);
        assert_eq!(q.finish(&"s", Settled::Retry).retry, Some((Duration::from_secs(1), 1)));
    }
}
