//! `driftwatch run`: watches DriftPolicies, Helm's release records and the live objects of
//! tracked releases; checks releases when something changes (and every policy interval as a
//! safety net); writes DriftReports and policy status with server-side apply only when they
//! change; emits Events on transitions; exports metrics. Every replica watches and checks; only
//! the lease holder writes.

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

use crate::api::{DriftPolicy, DriftReport, parse_duration};
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

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Work {
    All,
    Release(String, String),
    PolicyStatus,
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
    policy_written: Mutex<HashMap<String, serde_json::Value>>,
    watched_kinds: Mutex<HashSet<(String, String)>>,
    heals: Mutex<HashMap<(String, String), healing::HealState>>,
    pub metrics: Arc<Metrics>,
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

    async fn reconcile_all(self: &Arc<Self>) {
        let mut seen = HashSet::new();
        for ns in self.namespaces() {
            let listing = self.store.list(ns.as_deref()).await;
            for e in &listing.errors {
                tracing::warn!(error = %e, "cannot list release storage");
            }
            for h in group_releases(listing.records) {
                seen.insert((h.namespace.clone(), h.name.clone()));
                self.enqueue(Work::Release(h.namespace, h.name));
            }
        }
        // Reports of releases that are gone.
        for ns in self.namespaces() {
            let reports: Api<DriftReport> = match &ns {
                Some(n) => Api::namespaced(self.client.clone(), n),
                None => Api::all(self.client.clone()),
            };
            if let Ok(list) = reports.list_metadata(&ListParams::default()).await {
                for r in list.items {
                    let key = (r.metadata.namespace.clone().unwrap_or_default(), r.metadata.name.clone().unwrap_or_default());
                    if !seen.contains(&key) {
                        self.enqueue(Work::Release(key.0, key.1));
                    }
                }
            }
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

    async fn reconcile_release(self: &Arc<Self>, ns: &str, name: &str) {
        let key = (ns.to_string(), name.to_string());
        let listing = self.store.list_release(ns, name).await;
        if !listing.errors.is_empty() {
            for e in &listing.errors {
                tracing::warn!(namespace = ns, release = name, error = %e, "cannot read release storage");
            }
            return;
        }
        let Some(history) = group_releases(listing.records).into_iter().next() else {
            self.remove_report(ns, name, "the release is gone").await;
            return;
        };
        let policies = self.usable_policies().await;
        let ns_labels = if policies.iter().any(|p| p.spec.release_selector.namespace_selector.is_some()) {
            self.namespace_labels(ns).await
        } else {
            BTreeMap::new()
        };
        let labels = history.latest().labels.clone();
        let facts = ReleaseFacts { namespace: ns, name, chart: None, labels: &labels, namespace_labels: &ns_labels };
        let Some(policy) = winner(&self.settings.tenancy, &policies, &facts).cloned() else {
            self.remove_report(ns, name, "no policy covers the release").await;
            return;
        };
        let ignore = IgnoreRules::compile(&policy.spec.ignore).unwrap_or_default();
        let settings = CheckSettings { ignore: &ignore, ignore_managers: &policy.spec.ignore_managers, confirm: true, concurrency: 8 };
        let started = Instant::now();
        let report = check_release_cached(&self.store, &self.resolver, Some(&self.cache), &history, None, &settings).await;
        self.metrics.check_duration.observe(started.elapsed().as_secs_f64());
        let result = if report.error.is_some() { "error" } else if report.drifted { "drifted" } else { "in_sync" };
        self.metrics.checks_total.with_label_values(&[result]).inc();
        if report.error.as_deref().is_some_and(|e| e.starts_with("decoding")) {
            self.metrics.decode_errors.inc();
        }
        // The chart filter needs the decoded record: re-decide with it.
        let facts = ReleaseFacts { chart: Some(&report.chart), ..facts };
        let Some(policy) = winner(&self.settings.tenancy, &policies, &facts).cloned() else {
            self.remove_report(ns, name, "no policy covers the release's chart").await;
            return;
        };
        for r in &report.resources {
            if !r.kind.is_empty() {
                self.watch_kind(&r.api_version, &r.kind).await;
            }
        }
        let pkey = policy_key(&policy);
        let interval = parse_duration(&policy.spec.interval).unwrap_or(Duration::from_secs(300));
        let previous = self.memos.lock().await.get(&key).cloned();
        let previous = match previous {
            Some(m) => Some(m),
            None => self.seed_memo(ns, name).await,
        };
        let now = jiff::Timestamp::now();
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
            return;
        }
        let changed = previous.as_ref().is_none_or(|m| m.status.comparable != built.written.comparable);
        let stale = previous.as_ref().is_none_or(|m| m.written_at.elapsed() >= interval);
        if changed || stale {
            match self.write_report(ns, name, &built.written.full).await {
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
                Err(e) => tracing::warn!(namespace = ns, release = name, error = %e, "cannot write the DriftReport"),
            }
        }
    }

    /// Heals a release under a `Heal` policy when the guardrails allow, and says what the
    /// report should show.
    #[allow(clippy::too_many_arguments)]
    async fn heal(
        self: &Arc<Self>,
        key: &(String, String),
        history: &crate::helm::ReleaseHistory,
        report: &crate::check::ReleaseReport,
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
        let after = parse_duration(&spec.after).unwrap_or_default();
        let age = Duration::from_secs_f64(((now.as_millisecond() - first_drift.as_millisecond()).max(0) as f64) / 1000.0);
        let warn = |reason: &str, note: String| KubeEvent { type_: EventType::Warning, reason: reason.into(), note: Some(note), action: "Heal".into(), secondary: None };
        if report.drifted && report.error.is_none() && self.is_leader() {
            st.times.retain(|t| t.elapsed() < Duration::from_secs(3600));
            if latest.status.is_pending() {
                st.condition = Some(("False".into(), "ReleasePending".into(), format!("revision {} is {}: nothing is healed while Helm holds its lock", latest.revision, latest.status)));
            } else if age < after {
                st.condition = Some(("False".into(), "HealDelayed".into(), format!("drift is {}s old; heal.after is {}", age.as_secs(), spec.after)));
                // Nothing else may change before the grace ends: look again then.
                self.recheck_after(key, after - age + Duration::from_millis(200));
            } else if st.times.len() >= spec.max_per_hour as usize {
                st.condition = Some(("False".into(), "RateLimited".into(), format!("{} heals in the last hour (heal.maxPerHour {})", st.times.len(), spec.max_per_hour)));
                if let Some(oldest) = st.times.front() {
                    self.recheck_after(key, Duration::from_secs(3600).saturating_sub(oldest.elapsed()) + Duration::from_secs(1));
                }
            } else if let Some(decoded) = history.reference().and_then(|r| self.cache.get(&r.namespace, &r.release, r.revision)) {
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
        let st = existing.status?;
        let written = status::Written::from_status(&st);
        Some(Memo {
            policy: st.policy.clone().unwrap_or_default(),
            drifted: st.drift.as_deref() == Some("Drifted"),
            unhealthy: st.conditions.iter().any(|c| c.type_ == "ReleaseHealthy" && c.status == "False"),
            status: written,
            written_at: Instant::now(),
        })
    }

    async fn write_report(&self, ns: &str, name: &str, status: &serde_json::Value) -> Result<k8s_openapi::api::core::v1::ObjectReference, kube::Error> {
        let api: Api<DriftReport> = Api::namespaced(self.client.clone(), ns);
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let obj = api
            .patch(name, &pp, &Patch::Apply(json!({
                "apiVersion": "driftwatch.io/v1alpha1", "kind": "DriftReport",
                "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "driftwatch"}},
                "spec": {}
            })))
            .await?;
        api.patch_status(name, &pp, &Patch::Apply(json!({"apiVersion": "driftwatch.io/v1alpha1", "kind": "DriftReport", "status": status})))
            .await?;
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
        let policies = self.policies.read().await.clone();
        let memos = self.memos.lock().await.clone();
        for p in &policies {
            let key = policy_key(p);
            let mine: Vec<&Memo> = memos.values().filter(|m| m.policy == key).collect();
            let st = status::policy_status(&self.settings.tenancy, p, mine.len(), mine.iter().filter(|m| m.drifted).count(), mine.iter().filter(|m| m.unhealthy).count());
            let comparable = st.clone();
            if self.policy_written.lock().await.get(&key) == Some(&comparable) {
                continue;
            }
            let mut full = st;
            full["lastScanTime"] = json!(jiff::Timestamp::now().to_string());
            let api: Api<DriftPolicy> = Api::namespaced(self.client.clone(), p.metadata.namespace.as_deref().unwrap_or_default());
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            let body = json!({"apiVersion": "driftwatch.io/v1alpha1", "kind": "DriftPolicy", "status": full});
            match api.patch_status(&p.name_any(), &pp, &Patch::Apply(body)).await {
                Ok(_) => {
                    self.policy_written.lock().await.insert(key, comparable);
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
        tokio::spawn(async move {
            let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(me.client.clone(), &resolved.resource);
            let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
            // Objects of this kind counted into the gauge; a re-list after a watch restart
            // replaces the count rather than adding to it.
            let (mut initial, mut counted) = (0f64, 0f64);
            while let Some(ev) = stream.next().await {
                let meta = match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => o.metadata,
                    Ok(watcher::Event::Init) => {
                        initial = 0.0;
                        continue;
                    }
                    Ok(watcher::Event::InitApply(_)) => {
                        initial += 1.0;
                        continue;
                    }
                    Ok(watcher::Event::InitDone) => {
                        me.metrics.watched_objects.add(initial - counted);
                        counted = initial;
                        continue;
                    }
                    _ => continue,
                };
                let ann = meta.annotations.unwrap_or_default();
                if let (Some(r), Some(ns)) = (ann.get("meta.helm.sh/release-name"), ann.get("meta.helm.sh/release-namespace")) {
                    me.enqueue(Work::Release(ns.clone(), r.clone()));
                }
            }
        });
    }
}

/// Watches one driver's release records (metadata only): a change re-checks its release.
async fn watch_records<K>(me: Arc<Controller>, ns: Option<String>, cfg: watcher::Config)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let api: Api<PartialObjectMeta<K>> = match &ns {
        Some(n) => Api::namespaced(me.client.clone(), n),
        None => Api::all(me.client.clone()),
    };
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    while let Some(ev) = stream.next().await {
        if let Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) = ev {
            if let (Some(ns), Some(name)) = (o.metadata.namespace.clone(), o.labels().get("name").cloned()) {
                me.enqueue(Work::Release(ns, name));
            }
        }
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(client: Client, settings: Settings, metrics: Arc<Metrics>, ready: Arc<AtomicBool>, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let recorder = Recorder::new(client.clone(), Reporter { controller: REPORTING_CONTROLLER.into(), instance: Some(settings.identity.clone()) });
    let ctl = Arc::new(Controller {
        store: ReleaseStore::new(client.clone()),
        resolver: Resolver::new(client.clone()),
        cache: ReleaseCache::default(),
        client: client.clone(),
        settings: settings.clone(),
        policies: RwLock::new(Vec::new()),
        memos: Mutex::new(HashMap::new()),
        policy_written: Mutex::new(HashMap::new()),
        watched_kinds: Mutex::new(HashSet::new()),
        heals: Mutex::new(HashMap::new()),
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
        tasks.spawn(async move { lease::run(c, ns, id, leader, stop2, move || me.enqueue(Work::All)).await });
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
                    ps.retain(|o| o.metadata.uid != p.metadata.uid);
                    ps.push(p);
                    drop(ps);
                    if spec_changed {
                        me.enqueue(Work::All);
                    }
                }
                Ok(watcher::Event::Delete(p)) => {
                    me.policies.write().await.retain(|o| o.metadata.uid != p.metadata.uid);
                    me.policy_written.lock().await.remove(&policy_key(&p));
                    me.enqueue(Work::All);
                }
                Err(e) => tracing::warn!(error = %e, "policy watch"),
            }
        }
    });

    // Release records (metadata only), both drivers.
    for ns in ctl.namespaces() {
        let secrets = watcher::Config::default()
            .labels(crate::helm::storage::OWNER_SELECTOR)
            .fields(&format!("type={}", crate::helm::storage::SECRET_TYPE));
        tasks.spawn(watch_records::<Secret>(ctl.clone(), ns.clone(), secrets));
        let config_maps = watcher::Config::default().labels(crate::helm::storage::OWNER_SELECTOR);
        tasks.spawn(watch_records::<ConfigMap>(ctl.clone(), ns, config_maps));
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
                .filter_map(|p| parse_duration(&p.spec.interval).ok())
                .min()
                .unwrap_or(Duration::from_secs(300))
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
                me.start(&w);
                match &w {
                    Work::All => me.reconcile_all().await,
                    Work::Release(ns, name) => me.reconcile_release(ns, name).await,
                    Work::PolicyStatus => me.reconcile_policy_status().await,
                }
                me.finish(&w);
                drop(permit);
            });
        }
    });

    shutdown.await;
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
