//! `driftwatch run`: wiring. Watches ([`watches`], through one [`watch`] driver) feed the pure
//! [`index`], which answers with the releases to re-check; the [`queue`] runs each at most once
//! at a time with backoff on failure; [`reconcile`] reads, checks, and asks [`decide`],
//! [`policy`], `heal` and [`status`] what to do; the [`writer`] sends it, if this replica
//! leads ([`lease`]). Every replica watches and checks; only the lease holder writes.

pub mod decide;
pub mod digest_key;
pub mod index;
pub mod lease;
pub mod policy;
pub mod queue;
mod reconcile;
pub mod status;
pub mod watch;
mod watches;
pub mod writer;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::{Semaphore, mpsc};

use crate::check::ReleaseCache;
use crate::cluster::{ReleaseStore, Resolver};
use crate::helm::Driver;
use crate::helm::records::{OWNER_SELECTOR, SECRET_TYPE};
use crate::metrics::Metrics;
use index::{Index, KindKey, ReleaseKey};
use policy::{CompiledPolicy, Tenancy};
use queue::{Lane, Settled, WorkQueue};
use lease::Leadership;
use writer::Writer;

pub const REPORTING_CONTROLLER: &str = "driftwatch.io/controller";

/// Releases a controller checks at once by default (`driftwatch run --workers`).
pub const WORKERS: usize = 8;

#[derive(Clone, Debug)]
pub struct Settings {
    pub tenancy: Tenancy,
    /// Namespaces to watch (empty: all).
    pub watch_namespaces: Vec<String>,
    pub leader_elect: bool,
    /// This replica's name (the lease holder identity).
    pub identity: String,
    /// The controller's own namespace (its Lease lives there).
    pub namespace: String,
    /// Releases checked at once.
    pub concurrency: usize,
    /// Confirm local verdicts with a server-side dry-run apply (needs patch permission).
    pub confirm: bool,
    /// Release shards by namespace, each written by the holder of its lease (`--shards`; 1: one
    /// leader for all). Needs `leader_elect`.
    pub shards: u32,
}

/// A unit of work: re-check everything (find gone releases, seed after a start), one release,
/// or the policies' status.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Work {
    All,
    Release(String, String),
    PolicyStatus,
}

/// The controller's context: its clients, what it knows, its queue and its writer.
pub struct Controller {
    client: Client,
    settings: Settings,
    store: ReleaseStore,
    resolver: Resolver,
    cache: ReleaseCache,
    /// The key of Secret digests in reports (kept in a Secret in the controller's namespace).
    digest_key: crate::drift::DigestKey,
    metrics: Arc<Metrics>,
    writer: Writer,
    /// The policies, compiled once per change.
    policies: RwLock<Vec<Arc<CompiledPolicy>>>,
    /// Every policy watch has listed once: until then no release is checked (with part of the
    /// policies known, a release covered by one not yet listed would lose its report).
    policies_listed: AtomicBool,
    index: Mutex<Index>,
    heals: Mutex<HashMap<ReleaseKey, crate::heal::HealState>>,
    /// Policy key → its status as last written (without times) and when.
    policy_written: Mutex<HashMap<String, decide::PolicyWritten>>,
    /// With shards: what every report in scope counts for its policy, from a watch of the
    /// reports (`listed` once every scope listed). The holder of shard 0 writes the policies'
    /// status from it, whichever replica wrote each report.
    tallies: Mutex<(bool, HashMap<ReleaseKey, index::Tally>)>,
    /// Kinds whose live objects are watched.
    watched_kinds: Mutex<HashSet<KindKey>>,
    queue: Mutex<WorkQueue<Work>>,
    /// The workers' two lanes ([`queue::Lane`]): changes, then full passes.
    sender: mpsc::UnboundedSender<Work>,
    later: mpsc::UnboundedSender<Work>,
}

impl Controller {
    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().expect("index lock")
    }

    /// Whether this controller is responsible for a namespace (`--watch-namespaces`).
    fn covers(&self, ns: &str) -> bool {
        self.settings.watch_namespaces.is_empty() || self.settings.watch_namespaces.iter().any(|n| n == ns)
    }

    /// Whether this replica checks a namespace's releases: it covers the namespace, and (with
    /// shards) holds the namespace's shard.
    fn mine(&self, ns: &str) -> bool {
        self.covers(ns) && self.writer.leadership.checks(ns)
    }

    /// Shard `k` was won: what this replica remembers having written for its releases may have
    /// been overwritten by the holder before it, so their reports are read again (a new term)
    /// and every release of the shard is checked. With one shard, that is every release.
    fn gained(&self, k: u32) {
        self.metrics.shards_held.set(self.writer.leadership.held().len() as f64);
        let shards = self.settings.shards;
        let of_k = |ns: &str| lease::shard_of(ns, shards) == k;
        self.index().new_term(of_k);
        self.heals.lock().expect("heals").retain(|key, _| !of_k(&key.0));
        if k == 0 {
            // The policies' status too: another replica may have written it since.
            self.policy_written.lock().expect("policy status memo").clear();
        }
        self.enqueue(Work::All);
    }

    /// Shard `k` was lost or handed over (writing for it stopped already): with shards, its
    /// releases are another replica's, so what was kept for them goes, metrics series included
    /// (the new holder exports them). With one shard, a standby keeps checking.
    fn lost(&self, k: u32) {
        self.metrics.shards_held.set(self.writer.leadership.held().len() as f64);
        let shards = self.settings.shards;
        if shards <= 1 {
            return;
        }
        let of_k = |ns: &str| lease::shard_of(ns, shards) == k;
        let gone = self.index().forget_where(of_k);
        self.heals.lock().expect("heals").retain(|key, _| !of_k(&key.0));
        for (ns, name) in gone {
            self.cache.forget(&ns, &name);
        }
        self.metrics.forget_releases_where(of_k);
    }

    /// Whether a policy can select any release this controller covers: one in a watched
    /// namespace, or in a cluster-policy namespace. Changes to other policies re-check nothing.
    fn may_select(&self, p: &crate::api::DriftPolicy) -> bool {
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        self.covers(ns) || self.settings.tenancy.is_cluster_policy(ns)
    }

    /// The namespaces to list and watch: each of `--watch-namespaces`, or all (None).
    fn namespaces(&self) -> Vec<Option<String>> {
        if self.settings.watch_namespaces.is_empty() {
            vec![None]
        } else {
            self.settings.watch_namespaces.iter().cloned().map(Some).collect()
        }
    }

    fn enqueue(&self, w: Work) {
        self.enqueue_on(w, Lane::Now);
    }

    fn enqueue_on(&self, w: Work, lane: Lane) {
        // Another controller (or replica, with shards) may own the rest of the cluster: never
        // act outside our namespaces.
        if let Work::Release(ns, _) = &w {
            if !self.mine(ns) {
                return;
            }
        }
        let send = self.queue.lock().expect("queue lock").add(w.clone(), lane, std::time::Instant::now());
        let _ = match send {
            Some(Lane::Now) => self.sender.send(w),
            Some(Lane::Later) => self.later.send(w),
            None => Ok(()),
        };
    }

    /// Releases a watch saw change: checked before any full pass's.
    fn enqueue_releases(&self, keys: impl IntoIterator<Item = ReleaseKey>) {
        for (ns, name) in keys {
            self.enqueue(Work::Release(ns, name));
        }
    }

    /// Releases of a full pass (the cold scan, the periodic re-check, a re-list's): after the
    /// changes.
    fn enqueue_pass(&self, keys: impl IntoIterator<Item = ReleaseKey>) {
        for (ns, name) in keys {
            self.enqueue_on(Work::Release(ns, name), Lane::Later);
        }
    }

    /// The policies' status (counts over every release they select): on the `Later` lane, so
    /// a pass writes it once, after its releases, not once per report it writes.
    fn enqueue_policy_status(&self) {
        self.enqueue_on(Work::PolicyStatus, Lane::Later);
    }

    /// Adds work after a delay (a retry, a grace period or a rate limit ending).
    fn enqueue_after(self: &Arc<Self>, w: Work, delay: Duration) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            me.enqueue(w);
        });
    }

    /// Runs one unit of work from the queue and settles it there.
    async fn work(self: &Arc<Self>, w: Work) {
        use futures::FutureExt as _;
        let Some((lane, waited)) = self.queue.lock().expect("queue lock").start(&w, std::time::Instant::now()) else {
            // A stale copy from the other lane: it ran already, or is running.
            return;
        };
        if matches!(w, Work::Release(..)) {
            self.metrics.queue_wait.with_label_values(&[if lane == Lane::Now { "now" } else { "later" }]).observe(waited.as_secs_f64());
        }
        // A panic in one reconcile must not wedge its key (in flight for ever): it is logged,
        // the key is released and retried with backoff.
        // A change's check reads the few objects that changed by GET: listing their whole
        // scope (a pass's way) would make it wait for thousands of others under churn.
        let run = std::panic::AssertUnwindSafe(self.reconcile(&w)).catch_unwind();
        let ran = if lane == Lane::Now { crate::cluster::listing::one_by_one(run).await } else { run.await };
        let settled = ran.unwrap_or_else(|_| {
            tracing::error!(work = ?w, "a reconcile panicked; retrying it later");
            Settled::Retry
        });
        let after = self.queue.lock().expect("queue lock").finish(&w, settled);
        if let Some((delay, attempt)) = after.retry {
            tracing::info!(work = ?w, attempt, delay_ms = delay.as_millis() as u64, "retrying later");
            self.enqueue_after(w.clone(), delay);
        }
        let _ = match after.again {
            Some(Lane::Now) => self.sender.send(w),
            Some(Lane::Later) => self.later.send(w),
            None => Ok(()),
        };
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(client: Client, settings: Settings, metrics: Arc<Metrics>, ready: Arc<AtomicBool>, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let (later, mut later_receiver) = mpsc::unbounded_channel();
    let recorder = Recorder::new(client.clone(), Reporter { controller: REPORTING_CONTROLLER.into(), instance: Some(settings.identity.clone()) });
    anyhow::ensure!(settings.shards <= 1 || settings.leader_elect, "--shards needs --leader-elect: each shard is written by the holder of its lease");
    let leadership = Leadership::sharded(settings.leader_elect, settings.shards);
    let ctl = Arc::new(Controller {
        digest_key: digest_key::load(&client, &settings.namespace).await?,
        store: ReleaseStore::new(client.clone()),
        resolver: Resolver::with_cached_reads(client.clone()),
        cache: ReleaseCache::default(),
        writer: Writer::new(client.clone(), recorder, leadership.clone()),
        client: client.clone(),
        settings: settings.clone(),
        metrics,
        policies: RwLock::new(Vec::new()),
        policies_listed: AtomicBool::new(false),
        index: Mutex::new(Index::default()),
        heals: Mutex::new(HashMap::new()),
        policy_written: Mutex::new(HashMap::new()),
        tallies: Mutex::new((false, HashMap::new())),
        watched_kinds: Mutex::new(HashSet::new()),
        queue: Mutex::new(WorkQueue::default()),
        sender,
        later,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();

    if settings.leader_elect {
        let (c, ns, id, l, stop2, me, me2) = (client.clone(), settings.namespace.clone(), settings.identity.clone(), leadership.clone(), stop.clone(), ctl.clone(), ctl.clone());
        tasks.spawn(async move {
            lease::run(c, ns, id, l, stop2, move |k| me.gained(k), move |k| me2.lost(k)).await
        });
    }

    tasks.spawn(ctl.clone().watch_policies(ready));
    if settings.shards > 1 {
        tasks.spawn(ctl.clone().watch_tallies());
    }
    for ns in ctl.namespaces() {
        let secrets = kube::runtime::watcher::Config::default().labels(OWNER_SELECTOR).fields(&format!("type={SECRET_TYPE}"));
        let config_maps = kube::runtime::watcher::Config::default().labels(OWNER_SELECTOR);
        ctl.index().records.watches += 2;
        tasks.spawn(ctl.clone().watch_records::<Secret>(Driver::Secret, ns.clone(), secrets));
        tasks.spawn(ctl.clone().watch_records::<ConfigMap>(Driver::ConfigMap, ns, config_maps));
    }

    // The safety net: a full re-check every (shortest) policy interval. The interval is read
    // again every second: a policy with a shorter one, applied after the start, is honoured at
    // once rather than after the interval there was before it. The same tick hands freed
    // memory back once a burst of work is over (queue::trim_due).
    let me = ctl.clone();
    tasks.spawn(async move {
        let mut last = std::time::Instant::now();
        let mut trimmed = (0u64, std::time::Instant::now());
        let mut idle_since = None;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let shortest = me.policies.read().expect("policies").iter().map(|p| p.interval).min();
            let shortest = shortest.unwrap_or_else(|| crate::api::DriftPolicySpec::default().interval()).max(Duration::from_secs(5));
            if last.elapsed() >= shortest {
                last = std::time::Instant::now();
                me.enqueue(Work::All);
            }
            let (idle, finished) = {
                let q = me.queue.lock().expect("queue lock");
                (q.is_empty(), q.finished())
            };
            idle_since = if idle { idle_since.or_else(|| Some(std::time::Instant::now())) } else { None };
            me.resolver.drop_stale_listings();
            me.store.drop_stale_listings();
            let idle_for = idle_since.map(|t: std::time::Instant| t.elapsed());
            if queue::trim_due(idle_for, crate::cluster::resolve::LISTING_TTL, finished - trimmed.0, trimmed.1.elapsed()) {
                crate::memory::give_back_freed();
                trimmed = (finished, std::time::Instant::now());
            }
        }
    });

    // Workers: at most `concurrency` units of work at once.
    let me = ctl.clone();
    tasks.spawn(async move {
        let permits = Arc::new(Semaphore::new(me.settings.concurrency.max(1)));
        loop {
            // A free worker takes a change before a full pass's release.
            let permit = permits.clone().acquire_owned().await.expect("semaphore open");
            let w = tokio::select! {
                biased;
                Some(w) = receiver.recv() => w,
                Some(w) = later_receiver.recv() => w,
                else => break,
            };
            let me = me.clone();
            tokio::spawn(async move {
                me.work(w).await;
                drop(permit);
            });
        }
    });

    supervise(tasks, &leadership, &stop, settings.leader_elect, shutdown).await
}

/// Runs until `shutdown` resolves, then gives the lease loop (if any) one turn to hand the
/// lease over. Every task runs for the life of the process: one that ends (a panic, the lease
/// loop dying) must not leave the process believing it leads or watches: this replica steps
/// down, stops the others, and says so in the error.
async fn supervise(
    mut tasks: tokio::task::JoinSet<()>,
    leadership: &Leadership,
    stop: &AtomicBool,
    lease_loop: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let died = tokio::select! {
        _ = shutdown => None,
        ended = tasks.join_next() => Some(ended),
    };
    if let Some(ended) = died {
        leadership.step_down();
        stop.store(true, Ordering::SeqCst);
        tasks.abort_all();
        let why = match ended {
            Some(Err(e)) if e.is_panic() => "a controller task panicked".to_string(),
            Some(Err(e)) => format!("a controller task failed: {e}"),
            _ => "a controller task ended".to_string(),
        };
        tracing::error!(why, "stopping: no longer leading or watching");
        anyhow::bail!("{why}; stopping (no longer leading or watching)");
    }
    tracing::info!("shutting down");
    stop.store(true, Ordering::SeqCst);
    if lease_loop {
        // Give the election loop one turn to hand the lease over.
        let _ = tasks.join_next().await;
    }
    tasks.abort_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_dies_steps_the_replica_down_and_stops_it() {
        let leadership = Leadership::new(true);
        leadership.set(0, true);
        let stop = AtomicBool::new(false);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(std::future::pending::<()>());
        tasks.spawn(async { panic!("the lease loop broke") });
        let err = supervise(tasks, &leadership, &stop, true, std::future::pending()).await.unwrap_err();
        assert_eq!(err.to_string(), "a controller task panicked; stopping (no longer leading or watching)");
        assert!(!leadership.leads(), "never goes on believing it leads");
        assert!(stop.load(Ordering::SeqCst));
        // A task that returns is as bad as one that panics.
        leadership.set(0, true);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async {});
        let err = supervise(tasks, &leadership, &AtomicBool::new(false), false, std::future::pending()).await.unwrap_err();
        assert!(err.to_string().starts_with("a controller task ended"), "{err}");
        assert!(!leadership.leads());
    }

    #[tokio::test]
    async fn a_shutdown_lets_the_lease_loop_hand_over() {
        let leadership = Leadership::new(true);
        let stop = Arc::new(AtomicBool::new(false));
        let handed_over = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        let (s, h) = (stop.clone(), handed_over.clone());
        tasks.spawn(async move {
            while !s.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            h.store(true, Ordering::SeqCst);
        });
        supervise(tasks, &leadership, &stop, true, tokio::time::sleep(Duration::from_millis(20))).await.unwrap();
        assert!(handed_over.load(Ordering::SeqCst));
    }
}
