//! `driftwatch run`: watches DriftPolicies, Helm's release records and the live objects of
//! tracked releases; checks releases when something changes (and every policy interval as a
//! safety net); writes DriftReports and policy status with server-side apply only when they
//! change; emits Events on transitions; exports metrics. Every replica watches and checks; only
//! the lease holder writes.

pub mod digest_key;
pub mod healing;
pub mod lease;
pub mod policy;
pub mod status;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource as _, ResourceExt as _};
use serde_json::json;
use tokio::sync::{Mutex, RwLock, Semaphore, mpsc};

use crate::api::{DriftPolicy, DriftReport};
use crate::check::{CheckSettings, ReleaseCache, check_release_cached};
use crate::cluster::{ReleaseStore, Resolver};
use crate::drift::IgnoreRules;
use crate::helm::group_releases;
use crate::metrics::Metrics;
use policy::{ReleaseFacts, Tenancy, policy_key, winner};

pub const FIELD_MANAGER: &str = "driftwatch.io/controller";
pub const REPORTING_CONTROLLER: &str = "driftwatch.io/controller";

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
}

/// How a reconcile ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    Done,
    /// Something failed that may work later: check the release again after a backoff.
    Retry,
}

/// The wait before the `attempt`-th retry (1-based): 1 s, doubling, at most 30 s.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Work {
    All,
    Release(String, String),
    PolicyStatus,
}

/// The live objects of one watched kind (apiVersion, kind) that Helm made: (namespace or "",
/// name) → change token ([`crate::check::change_token`]). `ready` once the watch has listed.
#[derive(Default)]
struct KindIndex {
    ready: bool,
    tokens: HashMap<(String, String), String>,
}

impl KindIndex {
    fn token(index: &HashMap<(String, String), KindIndex>, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<String> {
        index.get(&(api_version.to_string(), kind.to_string())).filter(|i| i.ready)?.tokens.get(&(namespace.to_string(), name.to_string())).cloned()
    }
}

/// One release's last report and what it was made against: the reference revision, the policy
/// (key@generation) and the newest revision and its status. Each resource in it carries the
/// change token of the object it was made from.
struct Verdicts {
    revision: u32,
    policy: String,
    report: crate::report::ReleaseReport,
    latest: (u32, crate::helm::ReleaseStatus),
}

impl Verdicts {
    /// The earlier report, if every object it covers is still at the version it was checked
    /// at (and every object was read: none missing or in error).
    fn still_valid(&self, live: &HashMap<(String, String), KindIndex>) -> Option<crate::report::ReleaseReport> {
        // Every object was read (none missing or in error) and is still at that version.
        let unchanged = self.report.resources.iter().all(|r| {
            r.change_token.is_some() && KindIndex::token(live, &r.api_version, &r.kind, r.namespace.as_deref().unwrap_or(""), &r.name) == r.change_token
        });
        unchanged.then(|| self.report.clone())
    }
}

/// A release's earlier verdicts, offered to a re-check for the objects the watches show
/// unchanged.
struct Prior<'a> {
    live: &'a std::sync::RwLock<HashMap<(String, String), KindIndex>>,
    resources: Vec<crate::report::ResourceReport>,
}

impl crate::check::Reuse for Prior<'_> {
    fn unchanged(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<crate::report::ResourceReport> {
        let ns = namespace.unwrap_or("");
        let earlier = self.resources.iter().find(|r| r.api_version == api_version && r.kind == kind && r.namespace.as_deref().unwrap_or("") == ns && r.name == name)?;
        let current = KindIndex::token(&self.live.read().expect("live index"), api_version, kind, ns, name)?;
        (earlier.change_token.as_deref() == Some(current.as_str())).then(|| earlier.clone())
    }
}

/// Release records by watch: (driver, namespace, object name) → metadata. `listed` counts the
/// storage watches that have finished their first listing.
#[derive(Default)]
struct RecordIndex {
    listed: usize,
    watches: usize,
    /// (namespace, release) → (driver, object name) → record.
    by_release: HashMap<(String, String), HashMap<(crate::helm::Driver, String), crate::helm::RecordMeta>>,
}

impl RecordIndex {
    fn ready(&self) -> bool {
        self.watches > 0 && self.listed >= self.watches
    }

    fn of_release(&self, ns: &str, name: &str) -> Vec<crate::helm::RecordMeta> {
        self.by_release.get(&(ns.to_string(), name.to_string())).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    fn all(&self) -> Vec<crate::helm::RecordMeta> {
        self.by_release.values().flat_map(|m| m.values().cloned()).collect()
    }

    fn insert(&mut self, r: crate::helm::RecordMeta) {
        self.by_release.entry((r.namespace.clone(), r.release.clone())).or_default().insert((r.driver, r.object_name.clone()), r);
    }

    fn remove(&mut self, r: &crate::helm::RecordMeta) {
        let key = (r.namespace.clone(), r.release.clone());
        if let Some(m) = self.by_release.get_mut(&key) {
            m.remove(&(r.driver, r.object_name.clone()));
            if m.is_empty() {
                self.by_release.remove(&key);
            }
        }
    }

    /// Replaces one watch's records (driver, scope) after it (re-)listed; returns the releases
    /// whose records of that driver changed (added, removed or relabelled): the only ones a
    /// re-list after a broken watch needs to re-check.
    fn replace(&mut self, driver: crate::helm::Driver, scope: Option<&str>, records: Vec<crate::helm::RecordMeta>) -> HashSet<(String, String)> {
        let of_driver = |m: &HashMap<(crate::helm::Driver, String), crate::helm::RecordMeta>| -> Vec<crate::helm::RecordMeta> {
            let mut v: Vec<_> = m.iter().filter(|((d, _), _)| *d == driver).map(|(_, r)| r.clone()).collect();
            v.sort_by(|a, b| a.object_name.cmp(&b.object_name));
            v
        };
        type Snapshot = HashMap<(String, String), Vec<crate::helm::RecordMeta>>;
        let snapshot = |index: &HashMap<(String, String), HashMap<(crate::helm::Driver, String), crate::helm::RecordMeta>>| -> Snapshot {
            index.iter().filter(|((n, _), _)| scope.is_none_or(|s| s == n)).map(|(k, m)| (k.clone(), of_driver(m))).collect()
        };
        let before = snapshot(&self.by_release);
        self.by_release.retain(|(n, _), m| {
            if scope.is_none_or(|s| s == n) {
                m.retain(|(d, _), _| *d != driver);
            }
            !m.is_empty()
        });
        for r in records {
            self.insert(r);
        }
        let after = snapshot(&self.by_release);
        before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k).filter(|v| !v.is_empty()) != after.get(*k).filter(|v| !v.is_empty()))
            .cloned()
            .collect()
    }
}

/// What was last written for a release (or found written at start-up).
#[derive(Clone, Debug)]
struct Memo {
    policy: String,
    drifted: bool,
    unhealthy: bool,
    status: status::Written,
    written_at: Instant,
}

pub struct Controller {
    client: Client,
    store: ReleaseStore,
    resolver: Resolver,
    cache: ReleaseCache,
    settings: Settings,
    policies: RwLock<Vec<DriftPolicy>>,
    memos: Mutex<HashMap<(String, String), Memo>>,
    policy_written: Mutex<HashMap<String, (serde_json::Value, Instant)>>,
    watched_kinds: Mutex<HashSet<(String, String)>>,
    /// Live objects of the watched kinds that carry Helm's release annotations: their current
    /// change token, from the metadata watches.
    live: std::sync::RwLock<HashMap<(String, String), KindIndex>>,
    /// Each release's last report, whose verdicts are reused while their objects are unchanged.
    verdicts: std::sync::Mutex<HashMap<(String, String), Verdicts>>,
    /// Release records (metadata) from the storage watches, once every watch has listed.
    records: std::sync::RwLock<RecordIndex>,
    /// Whether memos were seeded from the existing reports (one LIST) since the last start or
    /// leadership change.
    seeded: AtomicBool,
    heals: Mutex<HashMap<(String, String), healing::HealState>>,
    /// Releases whose last reconcile must be retried: attempts so far.
    retries: std::sync::Mutex<HashMap<(String, String), u32>>,
    pub metrics: Arc<Metrics>,
    /// The key of Secret digests in reports (kept in a Secret in the controller's namespace).
    digest_key: crate::drift::DigestKey,
    recorder: Recorder,
    leader: Arc<AtomicBool>,
    pub ready: AtomicBool,
    queue: mpsc::UnboundedSender<Work>,
    pending: std::sync::Mutex<(HashSet<Work>, HashSet<Work>, HashSet<Work>)>, // pending, in flight, dirty
}

impl Controller {
    fn is_leader(&self) -> bool {
        !self.settings.leader_elect || self.leader.load(Ordering::SeqCst)
    }

    /// Whether this controller is responsible for a namespace (`--watch-namespaces`).
    fn covers(&self, ns: &str) -> bool {
        self.settings.watch_namespaces.is_empty() || self.settings.watch_namespaces.iter().any(|n| n == ns)
    }

    /// Whether a policy can select any release this controller covers: one in a watched
    /// namespace, or in a cluster-policy namespace. Changes to other policies re-check nothing.
    fn may_select(&self, p: &DriftPolicy) -> bool {
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        self.covers(ns) || self.settings.tenancy.cluster_policy_namespaces.iter().any(|c| c == ns)
    }

    fn enqueue(&self, w: Work) {
        // Another controller may own the rest of the cluster: never act outside our namespaces.
        if let Work::Release(ns, _) = &w {
            if !self.covers(ns) {
                return;
            }
        }
        let mut g = self.pending.lock().expect("queue lock");
        let (pending, inflight, dirty) = &mut *g;
        if inflight.contains(&w) {
            dirty.insert(w);
        } else if pending.insert(w.clone()) {
            let _ = self.queue.send(w);
        }
    }

    fn start(&self, w: &Work) {
        let mut g = self.pending.lock().expect("queue lock");
        g.0.remove(w);
        g.1.insert(w.clone());
    }

    fn finish(&self, w: &Work) {
        let again = {
            let mut g = self.pending.lock().expect("queue lock");
            g.1.remove(w);
            g.2.remove(w)
        };
        if again {
            self.enqueue(w.clone());
        }
    }

    fn namespaces(&self) -> Vec<Option<String>> {
        if self.settings.watch_namespaces.is_empty() {
            vec![None]
        } else {
            self.settings.watch_namespaces.iter().cloned().map(Some).collect()
        }
    }

    /// Release records in scope: from the storage watches once they have listed, else listed.
    async fn all_records(&self) -> Vec<crate::helm::RecordMeta> {
        {
            let index = self.records.read().expect("record index");
            if index.ready() {
                return index.all().into_iter().filter(|r| self.covers(&r.namespace)).collect();
            }
        }
        let mut out = Vec::new();
        for ns in self.namespaces() {
            let listing = self.store.list(ns.as_deref()).await;
            for e in &listing.errors {
                tracing::warn!(error = %e, "cannot list release storage");
            }
            out.extend(listing.records);
        }
        out
    }

    async fn reconcile_all(self: &Arc<Self>) {
        let mut seen = HashSet::new();
        for h in group_releases(self.all_records().await) {
            seen.insert((h.namespace.clone(), h.name.clone()));
        }
        // Reports of releases that are gone; and, after a start or a leadership change, what
        // every report says (one LIST instead of a GET per release).
        let seed = !self.seeded.load(Ordering::SeqCst);
        let mut listed_all = true;
        for ns in self.namespaces() {
            let reports: Api<DriftReport> = match &ns {
                Some(n) => Api::namespaced(self.client.clone(), n),
                None => Api::all(self.client.clone()),
            };
            let keys: Vec<(String, String)> = if seed {
                match reports.list(&ListParams::default().limit(500)).await {
                    Ok(list) => {
                        let mut memos = self.memos.lock().await;
                        let mut keys = Vec::new();
                        for r in list.items {
                            let key = (r.metadata.namespace.clone().unwrap_or_default(), r.metadata.name.clone().unwrap_or_default());
                            if let Some(m) = r.status.as_ref().map(memo_of) {
                                memos.entry(key.clone()).or_insert(m);
                            }
                            keys.push(key);
                        }
                        if list.metadata.continue_.as_deref().is_some_and(|c| !c.is_empty()) {
                            // More than a page: the rest are seeded one by one when checked.
                            listed_all = false;
                        }
                        keys
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list DriftReports");
                        listed_all = false;
                        Vec::new()
                    }
                }
            } else {
                match reports.list_metadata(&ListParams::default()).await {
                    Ok(list) => list.items.into_iter().map(|r| (r.metadata.namespace.unwrap_or_default(), r.metadata.name.unwrap_or_default())).collect(),
                    Err(_) => Vec::new(),
                }
            };
            for key in keys {
                if !seen.contains(&key) {
                    self.enqueue(Work::Release(key.0, key.1));
                }
            }
        }
        if seed {
            self.seeded.store(listed_all, Ordering::SeqCst);
        }
        for (ns, name) in seen {
            self.enqueue(Work::Release(ns, name));
        }
        self.enqueue(Work::PolicyStatus);
    }

    /// The policies that may be used, with their compiled rules; invalid ones are left out.
    async fn usable_policies(&self) -> Vec<DriftPolicy> {
        self.policies.read().await.iter().filter(|p| status::policy_problem(&self.settings.tenancy, p).is_none()).cloned().collect()
    }

    async fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.get_metadata_opt(ns).await.ok().flatten().and_then(|n| n.metadata.labels).unwrap_or_default()
    }

    /// Checks one release and writes what changed. `Retry` when something failed on the way
    /// that may work later (a read of storage or of live objects, a write): the worker puts
    /// the release back on the queue with backoff.
    async fn reconcile_release(self: &Arc<Self>, ns: &str, name: &str) -> Settled {
        let key = (ns.to_string(), name.to_string());
        let indexed = {
            let index = self.records.read().expect("record index");
            index.ready().then(|| index.of_release(ns, name))
        };
        let records = match indexed {
            Some(r) => r,
            None => {
                let listing = self.store.list_release(ns, name).await;
                if !listing.errors.is_empty() {
                    for e in &listing.errors {
                        tracing::warn!(namespace = ns, release = name, error = %e, "cannot read release storage");
                    }
                    return Settled::Retry;
                }
                listing.records
            }
        };
        let Some(history) = group_releases(records).into_iter().next() else {
            self.verdicts.lock().expect("verdicts").remove(&key);
            self.remove_report(ns, name, "the release is gone").await;
            return Settled::Done;
        };
        let policies = self.usable_policies().await;
        let ns_labels = if policies.iter().any(|p| p.spec.release_selector.namespace_selector.is_some()) {
            self.namespace_labels(ns).await
        } else {
            BTreeMap::new()
        };
        let labels = history.latest().labels.clone();
        let reference = history.reference().map(|r| r.revision).unwrap_or_default();
        let earlier = self.verdicts.lock().expect("verdicts").remove(&key);
        // The policy is chosen once, with the chart known: from the last verdict on the same
        // revision (no read), else from the reference revision (decoded once, cached, and used
        // by the check below). An unreadable record leaves the chart filter out.
        let chart = match earlier.as_ref().filter(|v| v.revision == reference && !v.report.chart.is_empty()) {
            Some(v) => Some(v.report.chart.clone()),
            None => match history.reference() {
                Some(record) => crate::check::decoded(&self.store, Some(&self.cache), record).await.ok().map(|d| d.release.chart.metadata.name.clone()),
                None => None,
            },
        };
        let facts = ReleaseFacts { namespace: ns, name, chart: chart.as_deref(), labels: &labels, namespace_labels: &ns_labels };
        let Some(policy) = winner(&self.settings.tenancy, &policies, &facts).cloned() else {
            self.remove_report(ns, name, "no policy covers the release").await;
            return Settled::Done;
        };
        let ignore = IgnoreRules::compile(&policy.spec.ignore).unwrap_or_default();
        let fingerprint = format!("{}@{}", policy_key(&policy), policy.metadata.generation.unwrap_or_default());
        let latest_now = (history.latest().revision, history.latest().status.clone());
        // Where each drift was first seen, whatever the revision or policy was then.
        let seen_before: Vec<crate::report::ResourceReport> =
            earlier.iter().flat_map(|v| v.report.resources.iter().filter(|r| r.seen.is_some()).cloned()).collect();
        let earlier = earlier.filter(|v| v.revision == reference && v.policy == fingerprint);
        let started = Instant::now();
        let unchanged = earlier.as_ref().filter(|v| v.latest == latest_now).and_then(|v| v.still_valid(&self.live.read().expect("live index")));
        let mut report = match unchanged {
            Some(r) => r,
            None => {
                let prior = Prior { live: &self.live, resources: earlier.map(|v| v.report.resources).unwrap_or_default() };
                let settings = CheckSettings {
                    ignore: &ignore,
                    ignore_managers: &policy.spec.ignore_managers,
                    operations_as_drift: policy.spec.operations_as_drift,
                    digest_key: Some(&self.digest_key),
                    confirm: true,
                    concurrency: crate::check::OBJECTS_AT_ONCE,
                    reuse: Some(&prior),
                };
                check_release_cached(&self.store, &self.resolver, Some(&self.cache), &history, None, &settings).await
            }
        };
        self.metrics.check_duration.observe(started.elapsed().as_secs_f64());
        let result = if report.error.is_some() { "error" } else if report.drifted { "drifted" } else { "in_sync" };
        self.metrics.checks_total.with_label_values(&[result]).inc();
        if report.error_kind == Some(crate::report::CheckErrorKind::Decode) {
            self.metrics.decode_errors.inc();
        }
        for r in &report.resources {
            if !r.kind.is_empty() {
                self.watch_kind(&r.api_version, &r.kind).await;
            }
        }
        let pkey = policy_key(&policy);
        let interval = policy.spec.interval();
        let previous = self.memos.lock().await.get(&key).cloned();
        let previous = match previous {
            Some(m) => Some(m),
            // Seeded from the LIST of reports: no memo means no report.
            None if self.seeded.load(Ordering::SeqCst) => None,
            None => self.seed_memo(ns, name).await,
        };
        let now = jiff::Timestamp::now();
        let written_before: Vec<crate::report::ResourceReport> = previous
            .as_ref()
            .and_then(|m| m.status.full.get("resources"))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        status::stamp_seen(&mut report, &[&seen_before, &written_before], now);
        if report.error.is_none() {
            let v = Verdicts { revision: report.revision, policy: fingerprint, report: report.clone(), latest: latest_now };
            self.verdicts.lock().expect("verdicts").insert(key.clone(), v);
        }
        let mut heal_events = Vec::new();
        let heal_view = if policy.spec.mode == crate::api::Mode::Heal {
            Some(self.heal(&key, &history, &report, &policy, &ignore, previous.as_ref(), now, &mut heal_events).await)
        } else {
            self.heals.lock().await.remove(&key);
            None
        };
        let built = status::build(&report, &pkey, previous.as_ref().map(|m| &m.status), now, &history, heal_view.as_ref());
        self.metrics.set_release(&built.series(&report));
        if !self.is_leader() {
            return Settled::Done;
        }
        let changed = previous.as_ref().is_none_or(|m| m.status.comparable != built.written.comparable);
        let stale = previous.as_ref().is_none_or(|m| m.written_at.elapsed() >= refresh_period(&key, interval));
        if changed || stale {
            match self.write_report(ns, name, &built.written.full, previous.is_some()).await {
                Ok(reference) => {
                    tracing::info!(namespace = ns, release = name, drifted = built.drifted, "DriftReport written");
                    for ev in heal_events.drain(..) {
                        if let Err(e) = self.recorder.publish(&ev, &reference).await {
                            tracing::warn!(namespace = ns, release = name, error = %e, "cannot publish the Event");
                        }
                    }
                    if let Some(ev) = status::transition_event(previous.as_ref().map(|m| m.drifted), &built) {
                        if let Err(e) = self.recorder.publish(&ev, &reference).await {
                            tracing::warn!(namespace = ns, release = name, reason = ev.reason, error = %e, "cannot publish the Event");
                        }
                    }
                    let healthy_before = previous.as_ref().is_none_or(|m| !m.unhealthy);
                    if built.unhealthy && healthy_before {
                        let ev = KubeEvent {
                            type_: EventType::Warning,
                            reason: "ReleaseUnhealthy".into(),
                            note: Some(built.health_message.clone()),
                            action: "Check".into(),
                            secondary: None,
                        };
                        if let Err(e) = self.recorder.publish(&ev, &reference).await {
                            tracing::warn!(namespace = ns, release = name, error = %e, "cannot publish the Event");
                        }
                    }
                    let drift_changed = previous.as_ref().is_none_or(|m| m.drifted != built.drifted || m.policy != pkey);
                    self.memos.lock().await.insert(
                        key,
                        Memo { policy: pkey, drifted: built.drifted, unhealthy: built.unhealthy, status: built.written, written_at: Instant::now() },
                    );
                    if drift_changed {
                        self.enqueue(Work::PolicyStatus);
                    }
                }
                Err(e) => {
                    tracing::warn!(namespace = ns, release = name, error = %e, "cannot write the DriftReport");
                    return Settled::Retry;
                }
            }
        }
        if report.transient {
            Settled::Retry
        } else {
            Settled::Done
        }
    }

    /// Heals a release under a `Heal` policy when the guardrails allow, and says what the
    /// report should show.
    #[allow(clippy::too_many_arguments)]
    async fn heal(
        self: &Arc<Self>,
        key: &(String, String),
        history: &crate::helm::ReleaseHistory,
        report: &crate::report::ReleaseReport,
        policy: &DriftPolicy,
        ignore: &IgnoreRules,
        previous: Option<&Memo>,
        now: jiff::Timestamp,
        events: &mut Vec<KubeEvent>,
    ) -> status::HealView {
        let mut states = self.heals.lock().await;
        let st = states.entry(key.clone()).or_default();
        let spec = &policy.spec.heal;
        let latest = history.latest();
        let first_drift = previous
            .and_then(|m| m.status.full.get("firstDriftTime").and_then(|v| v.as_str()).and_then(|t| t.parse::<jiff::Timestamp>().ok()))
            .unwrap_or(now);
        let after = policy.spec.heal_after();
        let age = Duration::from_secs_f64(((now.as_millisecond() - first_drift.as_millisecond()).max(0) as f64) / 1000.0);
        let warn = |reason: &str, note: String| KubeEvent { type_: EventType::Warning, reason: reason.into(), note: Some(note), action: "Heal".into(), secondary: None };
        if report.drifted && report.error.is_none() && self.is_leader() {
            st.times.retain(|t| t.elapsed() < crate::heal::RATE_WINDOW);
            let heals_last_hour: Vec<Duration> = st.times.iter().map(|t| t.elapsed()).collect();
            let status = latest.status.to_string();
            let facts = crate::heal::GuardFacts {
                pending: latest.status.is_pending().then_some((latest.revision, status.as_str())),
                age,
                after: (spec.after.as_str(), after),
                heals_last_hour: &heals_last_hour,
                max_per_hour: spec.max_per_hour,
            };
            let decision = crate::heal::guard(&facts);
            if let crate::heal::Guard::Wait { condition, recheck_in } = decision {
                st.condition = Some(condition);
                if let Some(delay) = recheck_in {
                    self.recheck_after(key, delay);
                }
            } else if let Some(decoded) = match history.reference() {
                Some(r) => crate::check::decoded(&self.store, Some(&self.cache), r).await.ok(),
                None => None,
            } {
                let pass = healing::heal_release(&self.resolver, &decoded, report, policy, ignore, st).await;
                let (ns, name) = (key.0.as_str(), key.1.as_str());
                for (path, manager) in &pass.newly_contested {
                    events.push(warn("HealContested", healing::settle_hint(path, manager)));
                    self.metrics.heals_total.with_label_values(&[ns, name, "contested"]).inc();
                }
                if !pass.healed.is_empty() || !pass.failed.is_empty() {
                    st.total += 1;
                    st.times.push_back(Instant::now());
                    let result = if pass.failed.is_empty() { "Succeeded" } else if pass.healed.is_empty() { "Failed" } else { "Partial" };
                    st.last = Some(json!({"time": now.to_string(), "result": result, "resources": pass.healed}));
                    self.metrics.heals_total.with_label_values(&[ns, name, &result.to_lowercase()]).inc();
                    if !pass.healed.is_empty() {
                        let note = format!("put back {}", pass.healed.join(", "));
                        events.push(KubeEvent { type_: EventType::Normal, reason: "DriftHealed".into(), note: Some(note.clone()), action: "Heal".into(), secondary: None });
                        st.condition = Some(("True".into(), "HealSucceeded".into(), note));
                    }
                    if !pass.failed.is_empty() {
                        let note = pass.failed.iter().map(|(k, e)| format!("{k}: {e}")).collect::<Vec<_>>().join("; ");
                        events.push(warn("HealFailed", note.clone()));
                        st.condition = Some(("False".into(), "HealFailed".into(), note));
                    }
                    // Look again at once: the report should show the result of the heal.
                    self.enqueue(Work::Release(key.0.clone(), key.1.clone()));
                }
            }
        }
        if let Some((path, manager)) = st.contested.iter().next() {
            st.condition = Some(("False".into(), "HealContested".into(), healing::settle_hint(path, manager)));
        }
        status::HealView { heals: st.total, last_heal: st.last.clone(), condition: st.condition.clone() }
    }

    /// After a reconcile: a failed one comes back after a growing delay; a done one forgets its
    /// failures.
    fn settle(self: &Arc<Self>, ns: &str, name: &str, settled: Settled) {
        let key = (ns.to_string(), name.to_string());
        let mut retries = self.retries.lock().expect("retries");
        match settled {
            Settled::Done => {
                retries.remove(&key);
            }
            Settled::Retry => {
                let attempt = retries.entry(key.clone()).or_default();
                *attempt += 1;
                let delay = retry_delay(*attempt);
                tracing::info!(namespace = ns, release = name, attempt = *attempt, delay_ms = delay.as_millis() as u64, "retrying the release later");
                drop(retries);
                self.recheck_after(&key, delay);
            }
        }
    }

    /// Re-checks a release after a delay (a grace period or a rate limit ending).
    fn recheck_after(self: &Arc<Self>, key: &(String, String), delay: Duration) {
        let me = Arc::clone(self);
        let work = Work::Release(key.0.clone(), key.1.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            me.enqueue(work);
        });
    }

    /// After a restart or a leader change: what the report already says, so an unchanged
    /// status is not written again and condition times are kept.
    async fn seed_memo(&self, ns: &str, name: &str) -> Option<Memo> {
        let api: Api<DriftReport> = Api::namespaced(self.client.clone(), ns);
        let existing = api.get_opt(name).await.ok().flatten()?;
        existing.status.as_ref().map(memo_of)
    }

    /// Writes a report's status (server-side apply). A report known to exist gets one request
    /// (the status); a new one two (the object, then its status).
    async fn write_report(&self, ns: &str, name: &str, status: &serde_json::Value, exists: bool) -> Result<k8s_openapi::api::core::v1::ObjectReference, kube::Error> {
        let api: Api<DriftReport> = Api::namespaced(self.client.clone(), ns);
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let body = json!({"apiVersion": "driftwatch.io/v1alpha1", "kind": "DriftReport", "status": status});
        if exists {
            match api.patch_status(name, &pp, &Patch::Apply(&body)).await {
                Ok(obj) => return Ok(obj.object_ref(&())),
                // Deleted by someone: made again below.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        api.patch(name, &pp, &Patch::Apply(json!({
            "apiVersion": "driftwatch.io/v1alpha1", "kind": "DriftReport",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "driftwatch"}},
            "spec": {}
        })))
        .await?;
        let obj = api.patch_status(name, &pp, &Patch::Apply(&body)).await?;
        Ok(obj.object_ref(&()))
    }

    async fn remove_report(&self, ns: &str, name: &str, why: &str) {
        let had = self.memos.lock().await.remove(&(ns.to_string(), name.to_string())).is_some();
        self.cache.forget(ns, name);
        self.metrics.forget_release(ns, name);
        if !self.is_leader() {
            return;
        }
        let api: Api<DriftReport> = Api::namespaced(self.client.clone(), ns);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(namespace = ns, release = name, why, "DriftReport deleted"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(namespace = ns, release = name, error = %e, "cannot delete the DriftReport"),
        }
        if had {
            self.enqueue(Work::PolicyStatus);
        }
    }

    async fn reconcile_policy_status(&self) {
        if !self.is_leader() {
            return;
        }
        // Only the policies this controller answers for: with controllers split by
        // --watch-namespaces, each would otherwise overwrite the others' counts with its own.
        let policies: Vec<DriftPolicy> = self.policies.read().await.iter().filter(|p| self.may_select(p)).cloned().collect();
        let memos = self.memos.lock().await.clone();
        for p in &policies {
            let key = policy_key(p);
            let mine: Vec<&Memo> = memos.values().filter(|m| m.policy == key).collect();
            let st = status::policy_status(&self.settings.tenancy, p, mine.len(), mine.iter().filter(|m| m.drifted).count(), mine.iter().filter(|m| m.unhealthy).count());
            let comparable = st.clone();
            // Unchanged: written again once an interval, for lastScanTime.
            let interval = p.spec.interval();
            if self.policy_written.lock().await.get(&key).is_some_and(|(c, at)| c == &comparable && at.elapsed() < interval) {
                continue;
            }
            let mut full = st;
            full["lastScanTime"] = json!(jiff::Timestamp::now().to_string());
            let api: Api<DriftPolicy> = Api::namespaced(self.client.clone(), p.metadata.namespace.as_deref().unwrap_or_default());
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            let body = json!({"apiVersion": "driftwatch.io/v1alpha1", "kind": "DriftPolicy", "status": full});
            match api.patch_status(&p.name_any(), &pp, &Patch::Apply(body)).await {
                Ok(_) => {
                    self.policy_written.lock().await.insert(key, (comparable, Instant::now()));
                }
                Err(e) => tracing::warn!(policy = key, error = %e, "cannot write policy status"),
            }
        }
    }

    /// Watches a kind's live objects (metadata only) so a change re-checks its release.
    async fn watch_kind(self: &Arc<Self>, api_version: &str, kind: &str) {
        let k = (api_version.to_string(), kind.to_string());
        if !self.watched_kinds.lock().await.insert(k) {
            return;
        }
        let Ok(resolved) = self.resolver.resolve(api_version, kind).await else { return };
        let me = Arc::clone(self);
        let (api_version, kind) = (api_version.to_string(), kind.to_string());
        tokio::spawn(async move {
            let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(me.client.clone(), &resolved.resource);
            let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
            let index_key = (api_version, kind);
            // Objects of this kind counted into the gauge; a re-list after a watch restart
            // replaces the count rather than adding to it.
            let (mut initial, mut counted) = (0f64, 0f64);
            let mut building: HashMap<(String, String), String> = HashMap::new();
            let mut releases_of: HashMap<(String, String), (String, String)> = HashMap::new();
            // (namespace or "", name) and change token of an object Helm made; its release.
            let helm_object = |meta: &kube::api::ObjectMeta| -> Option<((String, String), String, (String, String))> {
                let ann = meta.annotations.as_ref()?;
                let release = (ann.get("meta.helm.sh/release-namespace")?.clone(), ann.get("meta.helm.sh/release-name")?.clone());
                let id = (meta.namespace.clone().unwrap_or_default(), meta.name.clone()?);
                let token = crate::check::change_token(&index_key.0, &index_key.1, &serde_json::to_value(meta).unwrap_or_default());
                Some((id, token, release))
            };
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::Init) => {
                        initial = 0.0;
                        building.clear();
                        releases_of.clear();
                    }
                    Ok(watcher::Event::InitApply(o)) => {
                        initial += 1.0;
                        if let Some((id, token, release)) = helm_object(&o.metadata) {
                            releases_of.insert(id.clone(), release);
                            building.insert(id, token);
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        me.metrics.watched_objects.add(initial - counted);
                        counted = initial;
                        // An object that changed between a check's read and this listing has
                        // no event of its own: re-check the releases whose verdict is older.
                        let stale: HashSet<(String, String)> = {
                            let verdicts = me.verdicts.lock().expect("verdicts");
                            building
                                .iter()
                                .filter_map(|(id, token)| {
                                    let release = releases_of.get(id)?;
                                    let r = verdicts.get(release)?.report.resources.iter().find(|r| {
                                        r.api_version == index_key.0 && r.kind == index_key.1 && r.namespace.as_deref().unwrap_or("") == id.0 && r.name == id.1
                                    })?;
                                    (r.change_token.as_deref() != Some(token.as_str())).then(|| release.clone())
                                })
                                // And those with an object of this kind that was there when
                                // checked and is gone from the listing (deleted meanwhile).
                                .chain(verdicts.iter().filter_map(|(release, v)| {
                                    v.report
                                        .resources
                                        .iter()
                                        .any(|r| {
                                            r.api_version == index_key.0
                                                && r.kind == index_key.1
                                                && r.change_token.is_some()
                                                && !building.contains_key(&(r.namespace.clone().unwrap_or_default(), r.name.clone()))
                                        })
                                        .then(|| release.clone())
                                }))
                                .collect()
                        };
                        let mut live = me.live.write().expect("live index");
                        let entry = live.entry(index_key.clone()).or_default();
                        entry.tokens = std::mem::take(&mut building);
                        entry.ready = true;
                        drop(live);
                        releases_of.clear();
                        // The same after a broken watch re-listed: only the releases it cannot
                        // prove unchanged are re-checked, once each.
                        for (ns, r) in stale {
                            me.enqueue(Work::Release(ns, r));
                        }
                    }
                    Ok(watcher::Event::Apply(o)) => {
                        if let Some((id, token, (ns, r))) = helm_object(&o.metadata) {
                            let (id_ns, id_name) = (id.0.clone(), id.1.clone());
                            let before = me.live.write().expect("live index").entry(index_key.clone()).or_default().tokens.insert(id, token.clone());
                            // A status update (same generation, same metadata) changes nothing a
                            // manifest says: no re-check.
                            if before.as_deref() != Some(token.as_str()) {
                                tracing::debug!(kind = index_key.1, namespace = id_ns, name = id_name, before, token, "object changed");
                                me.enqueue(Work::Release(ns, r));
                            }
                        } else if let Some(name) = o.metadata.name.clone() {
                            // Not (or no longer) stamped by Helm: not vouched for by the index.
                            let id = (o.metadata.namespace.clone().unwrap_or_default(), name);
                            me.live.write().expect("live index").entry(index_key.clone()).or_default().tokens.remove(&id);
                        }
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        if let Some(name) = o.metadata.name.clone() {
                            let id = (o.metadata.namespace.clone().unwrap_or_default(), name);
                            me.live.write().expect("live index").entry(index_key.clone()).or_default().tokens.remove(&id);
                        }
                        if let Some((_, _, (ns, r))) = helm_object(&o.metadata) {
                            me.enqueue(Work::Release(ns, r));
                        }
                    }
                    _ => {}
                }
            }
        });
    }
}

/// How often an unchanged report's lastCheckTime is refreshed: once in 1–2 h (or the policy
/// interval, if longer), spread by release so that a thousand unchanged reports are not a
/// thousand writes at the same moment. A changed status is written at once.
pub const REFRESH: Duration = Duration::from_secs(3600);

fn refresh_period(key: &(String, String), interval: Duration) -> Duration {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let base = REFRESH.max(interval);
    base + base.mul_f64((h.finish() % 1000) as f64 / 1000.0)
}

/// What an existing report says, as a memo (after a restart or a leadership change: an
/// unchanged status is not written again and condition times are kept).
fn memo_of(st: &crate::api::DriftReportStatus) -> Memo {
    Memo {
        policy: st.policy.clone().unwrap_or_default(),
        drifted: st.drift.as_deref() == Some("Drifted"),
        unhealthy: st.conditions.iter().any(|c| c.type_ == "ReleaseHealthy" && c.status == "False"),
        status: status::Written::from_status(st),
        written_at: Instant::now(),
    }
}

/// Watches one driver's release records (metadata only): keeps the record index and
/// re-checks a release when one of its records changes.
async fn watch_records<K>(me: Arc<Controller>, driver: crate::helm::Driver, ns: Option<String>, cfg: watcher::Config)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let api: Api<PartialObjectMeta<K>> = match &ns {
        Some(n) => Api::namespaced(me.client.clone(), n),
        None => Api::all(me.client.clone()),
    };
    let secret_type = (driver == crate::helm::Driver::Secret).then_some(crate::helm::records::SECRET_TYPE);
    let meta = |o: &PartialObjectMeta<K>| crate::helm::RecordMeta::from_metadata(driver, &o.metadata, secret_type).ok();
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let (mut building, mut listed_once) = (Vec::new(), false);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => building.clear(),
            Ok(watcher::Event::InitApply(o)) => building.extend(meta(&o)),
            Ok(watcher::Event::InitDone) => {
                let mut index = me.records.write().expect("record index");
                let changed = index.replace(driver, ns.as_deref(), std::mem::take(&mut building));
                if !listed_once {
                    index.listed += 1;
                    listed_once = true;
                } else {
                    // A re-list after the watch broke: re-check the releases whose records
                    // changed meanwhile, once each; the others are provably as they were.
                    drop(index);
                    for (ns, name) in changed {
                        me.enqueue(Work::Release(ns, name));
                    }
                }
            }
            Ok(watcher::Event::Apply(o)) => {
                if let Some(r) = meta(&o) {
                    let key = (r.namespace.clone(), r.release.clone());
                    me.records.write().expect("record index").insert(r);
                    me.enqueue(Work::Release(key.0, key.1));
                }
            }
            Ok(watcher::Event::Delete(o)) => {
                if let Some(r) = meta(&o) {
                    me.records.write().expect("record index").remove(&r);
                    me.enqueue(Work::Release(r.namespace, r.release));
                } else if let (Some(ns), Some(name)) = (o.metadata.namespace.clone(), o.labels().get("name").cloned()) {
                    me.enqueue(Work::Release(ns, name));
                }
            }
            Err(_) => {}
        }
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(client: Client, settings: Settings, metrics: Arc<Metrics>, ready: Arc<AtomicBool>, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let recorder = Recorder::new(client.clone(), Reporter { controller: REPORTING_CONTROLLER.into(), instance: Some(settings.identity.clone()) });
    let digest_key = digest_key::load(&client, &settings.namespace).await?;
    let ctl = Arc::new(Controller {
        digest_key,
        store: ReleaseStore::new(client.clone()),
        resolver: Resolver::with_cached_reads(client.clone()),
        cache: ReleaseCache::default(),
        client: client.clone(),
        settings: settings.clone(),
        policies: RwLock::new(Vec::new()),
        memos: Mutex::new(HashMap::new()),
        policy_written: Mutex::new(HashMap::new()),
        watched_kinds: Mutex::new(HashSet::new()),
        live: std::sync::RwLock::new(HashMap::new()),
        verdicts: std::sync::Mutex::new(HashMap::new()),
        records: std::sync::RwLock::new(RecordIndex::default()),
        seeded: AtomicBool::new(false),
        heals: Mutex::new(HashMap::new()),
        retries: std::sync::Mutex::new(HashMap::new()),
        metrics,
        recorder,
        leader: Arc::new(AtomicBool::new(false)),
        ready: AtomicBool::new(false),
        queue: tx,
        pending: std::sync::Mutex::new((HashSet::new(), HashSet::new(), HashSet::new())),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();

    if settings.leader_elect {
        let (c, ns, id, leader, stop2, me) = (client.clone(), settings.namespace.clone(), settings.identity.clone(), ctl.leader.clone(), stop.clone(), ctl.clone());
        tasks.spawn(async move {
            lease::run(c, ns, id, leader, stop2, move || {
                // A new leader reads what the reports say before writing any.
                me.seeded.store(false, Ordering::SeqCst);
                me.enqueue(Work::All)
            })
            .await
        });
    }

    // Policies.
    let me = ctl.clone();
    let ready2 = ready.clone();
    tasks.spawn(async move {
        let api: Api<DriftPolicy> = Api::all(me.client.clone());
        let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
        let mut buffer = Vec::new();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init) => buffer.clear(),
                Ok(watcher::Event::InitApply(p)) => buffer.push(p),
                Ok(watcher::Event::InitDone) => {
                    *me.policies.write().await = std::mem::take(&mut buffer);
                    me.ready.store(true, Ordering::SeqCst);
                    ready2.store(true, Ordering::SeqCst);
                    me.enqueue(Work::All);
                }
                Ok(watcher::Event::Apply(p)) => {
                    let mut ps = me.policies.write().await;
                    // A status write (ours) does not change the generation: nothing to re-check.
                    let spec_changed = ps.iter().find(|o| o.metadata.uid == p.metadata.uid).is_none_or(|o| o.metadata.generation != p.metadata.generation);
                    let relevant = me.may_select(&p);
                    ps.retain(|o| o.metadata.uid != p.metadata.uid);
                    ps.push(p);
                    drop(ps);
                    if spec_changed && relevant {
                        me.enqueue(Work::All);
                    }
                }
                Ok(watcher::Event::Delete(p)) => {
                    me.policies.write().await.retain(|o| o.metadata.uid != p.metadata.uid);
                    me.policy_written.lock().await.remove(&policy_key(&p));
                    if me.may_select(&p) {
                        me.enqueue(Work::All);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "policy watch"),
            }
        }
    });

    // Release records (metadata only), both drivers.
    for ns in ctl.namespaces() {
        let secrets = watcher::Config::default()
            .labels(crate::helm::records::OWNER_SELECTOR)
            .fields(&format!("type={}", crate::helm::records::SECRET_TYPE));
        ctl.records.write().expect("record index").watches += 2;
        tasks.spawn(watch_records::<Secret>(ctl.clone(), crate::helm::Driver::Secret, ns.clone(), secrets));
        let config_maps = watcher::Config::default().labels(crate::helm::records::OWNER_SELECTOR);
        tasks.spawn(watch_records::<ConfigMap>(ctl.clone(), crate::helm::Driver::ConfigMap, ns, config_maps));
    }

    // The safety net: a full re-check every (shortest) policy interval.
    let me = ctl.clone();
    tasks.spawn(async move {
        loop {
            let shortest = me
                .policies
                .read()
                .await
                .iter()
                .map(|p| p.spec.interval())
                .min()
                .unwrap_or_else(|| crate::api::DriftPolicySpec::default().interval())
                .max(Duration::from_secs(5));
            tokio::time::sleep(shortest).await;
            me.enqueue(Work::All);
        }
    });

    // Workers.
    let me = ctl.clone();
    tasks.spawn(async move {
        let permits = Arc::new(Semaphore::new(me.settings.concurrency.max(1)));
        while let Some(w) = rx.recv().await {
            let permit = permits.clone().acquire_owned().await.expect("semaphore open");
            let me = me.clone();
            tokio::spawn(async move {
                use futures::FutureExt as _;
                me.start(&w);
                let work = async {
                    match &w {
                        Work::All => me.reconcile_all().await,
                        Work::Release(ns, name) => {
                            let settled = me.reconcile_release(ns, name).await;
                            me.settle(ns, name, settled);
                        }
                        Work::PolicyStatus => me.reconcile_policy_status().await,
                    }
                };
                // A panic in one reconcile must not wedge its key (in flight for ever): it is
                // logged, the key is released and, for a release, retried with backoff.
                if std::panic::AssertUnwindSafe(work).catch_unwind().await.is_err() {
                    tracing::error!(work = ?w, "a reconcile panicked; retrying it later");
                    if let Work::Release(ns, name) = &w {
                        me.settle(ns, name, Settled::Retry);
                    }
                }
                me.finish(&w);
                drop(permit);
            });
        }
    });

    // Every task runs for the life of the process: one that ends (a panic, the lease loop
    // dying) must not leave the process believing it leads or watches. Stop, and say so.
    let died = tokio::select! {
        _ = shutdown => None,
        ended = tasks.join_next() => Some(ended),
    };
    if let Some(ended) = died {
        ctl.leader.store(false, Ordering::SeqCst);
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
    if settings.leader_elect {
        // Give the election loop one turn to hand the lease over.
        if let Some(lease) = tasks.join_next().await {
            let _ = lease;
        }
    }
    tasks.abort_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::helm::{Driver, RecordMeta, ReleaseStatus};

    fn record(driver: Driver, ns: &str, release: &str, rev: u32) -> RecordMeta {
        RecordMeta {
            driver,
            namespace: ns.into(),
            object_name: format!("sh.helm.release.v1.{release}.v{rev}"),
            release: release.into(),
            revision: rev,
            status: ReleaseStatus::Deployed,
            labels: Default::default(),
            created_at: None,
            modified_at: None,
        }
    }

    #[test]
    fn retries_back_off_to_thirty_seconds() {
        let secs: Vec<u64> = (1..=8).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_delay(0).as_secs(), 1);
        assert_eq!(retry_delay(u32::MAX).as_secs(), 30);
    }

    #[test]
    fn the_record_index_follows_its_watches() {
        let mut index = RecordIndex { watches: 2, ..Default::default() };
        assert!(!index.ready());
        index.replace(Driver::Secret, None, vec![record(Driver::Secret, "a", "web", 1), record(Driver::Secret, "b", "web", 1)]);
        index.replace(Driver::ConfigMap, None, vec![record(Driver::ConfigMap, "a", "db", 3)]);
        index.listed = 2;
        assert!(index.ready());
        index.insert(record(Driver::Secret, "a", "web", 2));
        assert_eq!(index.of_release("a", "web").len(), 2);
        index.remove(&record(Driver::Secret, "a", "web", 1));
        assert_eq!(index.of_release("a", "web").iter().map(|r| r.revision).collect::<Vec<_>>(), vec![2]);
        // A re-list of one driver in one namespace replaces only that driver's records there.
        index.replace(Driver::Secret, Some("a"), vec![]);
        assert!(index.of_release("a", "web").is_empty());
        assert_eq!(index.of_release("b", "web").len(), 1);
        assert_eq!(index.of_release("a", "db").len(), 1);
        assert_eq!(index.all().len(), 2);
    }

    #[test]
    fn a_relist_names_only_the_releases_whose_records_changed() {
        let mut index = RecordIndex { watches: 2, ..Default::default() };
        let first = vec![record(Driver::Secret, "a", "web", 1), record(Driver::Secret, "a", "db", 1), record(Driver::Secret, "b", "api", 2)];
        let changed = index.replace(Driver::Secret, None, first.clone());
        assert_eq!(changed.len(), 3, "the first listing: everything is new");
        assert!(index.replace(Driver::Secret, None, first.clone()).is_empty(), "the same listing again: nothing to re-check");
        // Meanwhile: web got revision 2, db was uninstalled, a release appeared, api unchanged.
        let mut web2 = record(Driver::Secret, "a", "web", 2);
        web2.status = ReleaseStatus::PendingUpgrade;
        let relist = vec![record(Driver::Secret, "a", "web", 1), web2, record(Driver::Secret, "b", "api", 2), record(Driver::Secret, "c", "new", 1)];
        let mut changed: Vec<(String, String)> = index.replace(Driver::Secret, None, relist).into_iter().collect();
        changed.sort();
        assert_eq!(changed, vec![("a".into(), "db".into()), ("a".into(), "web".into()), ("c".into(), "new".into())]);
        // Another driver's re-list leaves these alone.
        assert!(index.replace(Driver::ConfigMap, None, vec![]).is_empty());
    }

    #[test]
    fn unchanged_reports_are_refreshed_hourly_and_spread_out() {
        let periods: Vec<Duration> = (0..200).map(|i| refresh_period(&("ns".into(), format!("r{i}")), Duration::from_secs(300))).collect();
        assert!(periods.iter().all(|p| *p >= REFRESH && *p < REFRESH * 2));
        let distinct: HashSet<u64> = periods.iter().map(|p| p.as_secs() / 60).collect();
        assert!(distinct.len() > 30, "refreshes bunch together: {distinct:?}");
        // A policy interval longer than an hour stretches it.
        let long = refresh_period(&("ns".into(), "r".into()), Duration::from_secs(7200));
        assert!(long >= Duration::from_secs(7200));
    }
}
