//! One reconcile, carried: read what a decision needs (records, policies, namespace labels,
//! the check's live reads), ask the pure parts ([`super::policy`], [`super::decide`],
//! `heal`), and hand what they return to the writer. Nothing here decides on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use kube::runtime::events::Event;

use super::decide::{self, Facts};
use super::index::{Memo, ReleaseKey, Verdicts};
use super::policy::{CompiledPolicy, ReleaseFacts, winner};
use super::queue::Settled;
use super::status::{self, HealView};
use super::writer::{Sent, Write};
use super::{Controller, Work};
use crate::api::{DriftReport, Mode};
use crate::check::{CheckSettings, check_release_cached};
use crate::cluster::listing::list_pages;
use crate::helm::{RecordMeta, ReleaseHistory, group_releases};
use crate::report::{ReleaseReport, ResourceReport};

/// A release's earlier verdicts, offered to a re-check for the objects the watches show
/// unchanged.
struct Prior<'a> {
    ctl: &'a Controller,
    resources: Vec<ResourceReport>,
}

impl crate::check::Reuse for Prior<'_> {
    fn unchanged(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<ResourceReport> {
        let ns = namespace.unwrap_or("");
        let earlier = self.resources.iter().find(|r| r.api_version == api_version && r.kind == kind && r.namespace.as_deref().unwrap_or("") == ns && r.name == name)?;
        let current = self.ctl.index().token(api_version, kind, ns, name)?;
        (earlier.change_token == Some(current)).then(|| earlier.clone())
    }

    fn current(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Option<crate::report::ChangeToken>> {
        self.ctl.index().seen(api_version, kind, namespace.unwrap_or(""), name)
    }
}

impl Controller {
    pub(super) async fn reconcile(self: &Arc<Self>, w: &Work) -> Settled {
        match w {
            Work::All => {
                self.reconcile_all().await;
                Settled::Done
            }
            Work::Release(ns, name) => self.reconcile_release(&(ns.clone(), name.clone())).await,
            Work::PolicyStatus => self.reconcile_policy_status().await,
        }
    }

    /// Release records in scope: from the storage watches once they have listed, else listed.
    async fn all_records(&self) -> Vec<RecordMeta> {
        {
            let index = self.index();
            if index.records.ready() {
                return index.records.all().into_iter().filter(|r| self.mine(&r.namespace)).collect();
            }
        }
        let mut out = Vec::new();
        for ns in self.namespaces() {
            let listing = self.store.list(ns.as_deref()).await;
            for e in &listing.errors {
                tracing::warn!(error = %e, "cannot list release storage");
            }
            out.extend(listing.records.into_iter().filter(|r| self.mine(&r.namespace)));
        }
        out
    }

    /// One release's records: from the index once every storage watch has listed, else read
    /// (None: the read failed).
    async fn records_of(&self, key: &ReleaseKey) -> Option<Vec<RecordMeta>> {
        let indexed = {
            let index = self.index();
            index.records.ready().then(|| index.records.of_release(&key.0, &key.1))
        };
        if indexed.is_some() {
            return indexed;
        }
        let listing = self.store.list_release(&key.0, &key.1).await;
        for e in &listing.errors {
            tracing::warn!(namespace = key.0, release = key.1, error = %e, "cannot read release storage");
        }
        listing.errors.is_empty().then_some(listing.records)
    }

    /// Queues every release there is, and those whose report outlived them. After a start or
    /// a leadership change, first reads what every report says (a LIST in pages of 500, instead
    /// of a GET per release).
    async fn reconcile_all(self: &Arc<Self>) {
        // Ordered: a full pass goes namespace by namespace, so the objects a scan lists
        // (Resolver::read_live) are taken while their listing is fresh, and only one namespace's
        // are held at a time.
        let releases: BTreeSet<ReleaseKey> = group_releases(self.all_records().await).into_iter().map(|h| (h.namespace, h.name)).collect();
        let seed = !self.index().seeded;
        let mut listed_all = true;
        for ns in self.namespaces() {
            let reports: Api<DriftReport> = match &ns {
                Some(n) => Api::namespaced(self.client.clone(), n),
                None => Api::all(self.client.clone()),
            };
            let keys: Vec<ReleaseKey> = if seed {
                // Every page: a release whose report was not seeded is read by GET when checked
                // (10,000 GETs at a restart over 10,000 reports with one page).
                let unreadable = std::sync::atomic::AtomicBool::new(false);
                let keep = |item: &str| {
                    let Ok(r) = serde_json::from_str::<DriftReport>(item) else {
                        unreadable.store(true, std::sync::atomic::Ordering::Relaxed);
                        return None;
                    };
                    let key = (r.metadata.namespace.unwrap_or_default(), r.metadata.name.unwrap_or_default());
                    // Another shard's report is its holder's to remember.
                    let memo = r.status.as_ref().filter(|_| self.mine(&key.0)).map(Memo::of_status);
                    Some((format!("{}/{}", key.0, key.1), (key, memo)))
                };
                match list_pages(&self.client, &reports.resource_url(), ListParams::default(), || {}, keep).await {
                    Some(listed) => {
                        // One that could not be read is seeded when checked.
                        listed_all &= !unreadable.load(std::sync::atomic::Ordering::Relaxed);
                        let mut index = self.index();
                        listed
                            .into_values()
                            .map(|(key, memo)| {
                                if let Some(m) = memo {
                                    index.wrote(key.clone(), m, true);
                                }
                                key
                            })
                            .collect()
                    }
                    None => {
                        // The rest are seeded one by one when checked.
                        tracing::warn!("cannot list DriftReports (the cause is in the debug log): each report is read when its release is checked");
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
            self.enqueue_pass(keys.into_iter().filter(|k| !releases.contains(k)));
        }
        if seed {
            self.index().seeded = listed_all;
        }
        // Releases whose objects are stamped and that have no record: lost (LostRecords).
        let lost: Vec<ReleaseKey> = self.index().stamped_releases().into_iter().filter(|k| !releases.contains(k) && self.mine(&k.0)).collect();
        self.enqueue_pass(lost);
        self.enqueue_pass(releases);
        self.enqueue_policy_status();
    }

    /// The one policy for the whole reconcile, chosen with the chart known: from the last
    /// verdict on the same revision (no read), else from the reference revision (decoded once,
    /// cached, and used by the check). An unreadable record leaves the chart filter out.
    async fn choose_policy(&self, key: &ReleaseKey, history: &ReleaseHistory, earlier: Option<&Verdicts>) -> Option<Arc<CompiledPolicy>> {
        let reference = history.reference().map(|r| r.revision).unwrap_or_default();
        let chart = match earlier.filter(|v| v.revision == reference && !v.report.chart.is_empty()) {
            Some(v) => Some(v.report.chart.clone()),
            None => match history.reference() {
                Some(record) => crate::check::decoded(&self.store, Some(&self.cache), record).await.ok().map(|d| d.release.chart.metadata.name.clone()),
                None => None,
            },
        };
        self.policy_for(key, chart.as_deref(), &history.latest().labels).await
    }

    /// The winning usable policy for a release of this chart (None: unknown) and record labels;
    /// the namespace's labels are read only when some policy selects by them.
    async fn policy_for(&self, key: &ReleaseKey, chart: Option<&str>, labels: &BTreeMap<String, String>) -> Option<Arc<CompiledPolicy>> {
        let policies: Vec<Arc<CompiledPolicy>> = self.policies.read().expect("policies").iter().filter(|p| p.usable()).cloned().collect();
        let namespace_labels = if policies.iter().any(|p| p.spec().release_selector.namespace_selector.is_some()) {
            let api: Api<Namespace> = Api::all(self.client.clone());
            api.get_metadata_opt(&key.0).await.ok().flatten().and_then(|n| n.metadata.labels).unwrap_or_default()
        } else {
            BTreeMap::new()
        };
        let facts = ReleaseFacts { namespace: &key.0, name: &key.1, chart, labels, namespace_labels: &namespace_labels };
        winner(&self.settings.tenancy, &policies, &facts).cloned()
    }

    /// Checks a release under its policy, reusing the earlier verdicts the watches vouch for.
    async fn check(&self, history: &ReleaseHistory, policy: &CompiledPolicy, earlier: Option<Verdicts>) -> ReleaseReport {
        let reference = history.reference().map(|r| r.revision).unwrap_or_default();
        let latest = (history.latest().revision, history.latest().status.clone());
        let earlier = earlier.filter(|v| v.hold_for(reference, &policy.fingerprint, &latest));
        let unchanged = earlier.as_ref().and_then(|v| self.index().still_valid(v));
        if let Some(report) = unchanged {
            return report;
        }
        let prior = Prior { ctl: self, resources: earlier.map(|v| v.report.resources).unwrap_or_default() };
        let settings = CheckSettings {
            digest_key: Some(&self.digest_key),
            confirm: self.settings.confirm,
            concurrency: crate::check::OBJECTS_AT_ONCE,
            reuse: Some(&prior),
            ..policy.check_settings()
        };
        check_release_cached(&self.store, &self.resolver, Some(&self.cache), history, None, &settings).await
    }

    /// What was last written for a release: remembered, else (before the reports were listed)
    /// read.
    async fn previous(&self, key: &ReleaseKey) -> Option<Memo> {
        let (known, seeded) = {
            let index = self.index();
            (index.written(key).cloned(), index.seeded)
        };
        if known.is_some() || seeded {
            return known;
        }
        let api: Api<DriftReport> = Api::namespaced(self.client.clone(), &key.0);
        api.get_opt(&key.1).await.ok().flatten()?.status.as_ref().map(Memo::of_status)
    }

    /// Checks one release and writes what changed. `Retry` when something failed on the way
    /// that may work later (a read of storage or of live objects, a write).
    async fn reconcile_release(self: &Arc<Self>, key: &ReleaseKey) -> Settled {
        // Before every policy watch has listed, "no policy covers it" may be false: the pass
        // that follows the listing checks every release.
        if !self.policies_listed.load(std::sync::atomic::Ordering::SeqCst) {
            return Settled::Done;
        }
        // Its shard went to another replica while it waited.
        if !self.mine(&key.0) {
            return Settled::Done;
        }
        let Some(records) = self.records_of(key).await else { return Settled::Retry };
        let Some(history) = group_releases(records).into_iter().next() else {
            return self.lost_or_gone(key).await;
        };
        let earlier = self.index().take_verdicts(key);
        let Some(policy) = self.choose_policy(key, &history, earlier.as_ref()).await else {
            return self.drop_report(key, "no policy covers the release").await;
        };
        // Where each drift was first seen, whatever the revision or policy was then.
        let seen_before: Vec<ResourceReport> = earlier.iter().flat_map(|v| v.report.resources.iter().filter(|r| r.seen.is_some()).cloned()).collect();
        let started = Instant::now();
        let mut report = self.check(&history, &policy, earlier).await;
        self.metrics.check_duration.observe(started.elapsed().as_secs_f64());
        self.metrics.checks_total.with_label_values(&[report.result()]).inc();
        if report.error_kind == Some(crate::report::CheckErrorKind::Decode) {
            self.metrics.decode_errors.inc();
        }
        for r in report.resources.iter().filter(|r| !r.kind.is_empty()) {
            self.watch_kind(&r.api_version, &r.kind).await;
        }
        let thresholds = crate::diagnose::Thresholds::of(&policy.spec().health);
        report.findings = self.findings(key, &history, &report, &policy, thresholds).await;
        if let Some(delay) = crate::diagnose::stuck_in(&history, thresholds, jiff::Timestamp::now()) {
            self.enqueue_after(Work::Release(key.0.clone(), key.1.clone()), delay);
        }
        let previous = self.previous(key).await;
        // Its shard was lost during the check: the new holder keeps its verdicts and series.
        if !self.mine(&key.0) {
            return Settled::Done;
        }
        let now = jiff::Timestamp::now();
        let written_before: Vec<ResourceReport> = previous.as_ref().map(|m| m.status.status().resources).unwrap_or_default();
        status::stamp_seen(&mut report, &[&seen_before, &written_before], now);
        if report.error.is_none() {
            let v = Verdicts { revision: report.revision, policy: policy.fingerprint.clone(), report: report.clone(), latest: (history.latest().revision, history.latest().status.clone()) };
            self.index().keep_verdicts(key.clone(), v);
        }
        let (heal, heal_events) = if policy.spec().mode == Mode::Heal {
            let (view, events) = self.heal(key, &history, &report, &policy, previous.as_ref(), now).await;
            (Some(view), events)
        } else {
            self.heals.lock().expect("heals").remove(key);
            (None, Vec::new())
        };
        let decision = decide::report(Facts { key, report: &report, history: Some(&history), policy: &policy, previous: previous.as_ref(), heal: heal.as_ref(), heal_events, now });
        if !self.mine(&key.0) {
            self.index().take_verdicts(key);
            return Settled::Done;
        }
        self.metrics.set_release(&decision.built.series(&report));
        self.metrics.set_findings(&key.0, &key.1, &report.findings.iter().map(|f| f.kind.as_str()).collect::<Vec<_>>());
        let drifted = decision.built.drifted;
        match self.send_report(key, decision).await {
            Ok(true) => tracing::info!(namespace = key.0, release = key.1, drifted, "DriftReport written"),
            Ok(false) => {}
            Err(()) => return Settled::Retry,
        }
        if report.transient { Settled::Retry } else { Settled::Done }
    }

    /// The release-level findings of a checked release (section 1). Its evidence is read only
    /// when the newest revision is not `deployed` ([`crate::cluster::evidence::assess`]); the
    /// objects stamped for it that its manifest lacks come from the watches' index, and only
    /// for a deployed release (during an upgrade, or after a failed one, the newer revision's
    /// objects are not orphans). Hook objects are never in the index.
    async fn findings(&self, key: &ReleaseKey, history: &ReleaseHistory, report: &ReleaseReport, policy: &CompiledPolicy, thresholds: crate::diagnose::Thresholds) -> Vec<crate::report::Finding> {
        let orphans = decide::orphans(self.index().stamped_for(key), &history.latest().status, report);
        let settings = CheckSettings { digest_key: Some(&self.digest_key), ..policy.check_settings() };
        let assess = crate::cluster::evidence::Assess {
            history,
            report,
            thresholds,
            orphans,
            settings: &settings,
            always: false,
        };
        crate::cluster::evidence::assess(&self.store, &self.resolver, assess).await.findings
    }

    /// A release with no record left: if live objects are still stamped for it, its records
    /// were lost (deleted by hand, a cleanup script): a report with `LostRecords`, under the
    /// policy that would cover it. Otherwise it is gone.
    async fn lost_or_gone(self: &Arc<Self>, key: &ReleaseKey) -> Settled {
        let stamped = self.index().stamped_for(key);
        // Confirmed live: `helm uninstall` deletes the objects before the records, and the
        // watches may not have seen those deletions yet (an object being deleted does not count).
        let mut present = Vec::new();
        for ((api_version, kind), (ns, name)) in stamped {
            let Ok(resolved) = self.resolver.resolve(&api_version, &kind).await else { continue };
            match self.resolver.get_live(&resolved, (!ns.is_empty()).then_some(ns.as_str()), &name).await {
                Ok(Some(live)) if live.pointer("/metadata/deletionTimestamp").is_none() => present.push(((api_version, kind), (ns, name))),
                Ok(_) => {}
                Err(e) if e.is_transient() => return Settled::Retry,
                Err(_) => {}
            }
        }
        let stamped = present;
        if stamped.is_empty() {
            return self.drop_report(key, "the release is gone").await;
        }
        // The chart and the record labels went with the records: those filters cannot apply.
        let Some(policy) = self.policy_for(key, None, &BTreeMap::new()).await else {
            return self.drop_report(key, "no policy covers the release").await;
        };
        let objects: Vec<crate::report::FindingResource> = stamped.into_iter().map(decide::stamped_resource).collect();
        let count = objects.len();
        let report = decide::lost_records_report(key, objects);
        self.index().take_verdicts(key);
        self.cache.forget(&key.0, &key.1);
        let previous = self.previous(key).await;
        let decision = decide::report(Facts { key, report: &report, history: None, policy: &policy, previous: previous.as_ref(), heal: None, heal_events: Vec::new(), now: jiff::Timestamp::now() });
        self.metrics.checks_total.with_label_values(&[crate::report::CheckErrorKind::NoRecords.result()]).inc();
        // Not a Helm release any more: no helm_release_* series, only the finding.
        self.metrics.forget_release(&key.0, &key.1);
        self.metrics.set_findings(&key.0, &key.1, &["LostRecords"]);
        match self.send_report(key, decision).await {
            Ok(true) => tracing::warn!(namespace = key.0, release = key.1, objects = count, "release records lost: objects are stamped for a release with no record"),
            Ok(false) => {}
            Err(()) => return Settled::Retry,
        }
        Settled::Done
    }

    /// Sends a decision's report (if it has one to write) and remembers it once written.
    /// Ok(true): written; Ok(false): nothing to write, or dropped (not the leader); Err: the
    /// write failed (logged), worth retrying.
    async fn send_report(&self, key: &ReleaseKey, decision: decide::Decision) -> Result<bool, ()> {
        let Some(write) = decision.write else { return Ok(false) };
        match self.writer.send(&write).await {
            Ok(Sent::Written) => {
                self.index().wrote(key.clone(), decision.memo, false);
                if decision.policy_counts_change {
                    self.enqueue_policy_status();
                }
                Ok(true)
            }
            Ok(Sent::Dropped) => Ok(false),
            Err(e) => {
                tracing::warn!(namespace = key.0, release = key.1, error = %e, "cannot write the DriftReport");
                Err(())
            }
        }
    }

    /// The release is gone or uncovered: forget it and delete its report.
    async fn drop_report(&self, key: &ReleaseKey, why: &'static str) -> Settled {
        let had = self.index().forget(key);
        self.heals.lock().expect("heals").remove(key);
        self.cache.forget(&key.0, &key.1);
        self.metrics.forget_release(&key.0, &key.1);
        let delete = Write::DeleteReport { namespace: key.0.clone(), name: key.1.clone(), why };
        if let Err(e) = self.writer.send(&delete).await {
            tracing::warn!(namespace = key.0, release = key.1, error = %e, "cannot delete the DriftReport");
            return Settled::Retry;
        }
        if had {
            self.enqueue_policy_status();
        }
        Settled::Done
    }

    /// Heals a release under a `Heal` policy when the guardrails allow: the guard decides, the
    /// heal reads the drifted objects afresh (`cluster::heal::observe`), the planner picks the
    /// actions, the writer sends them. Returns what the report shows and the Events to publish.
    async fn heal(
        self: &Arc<Self>,
        key: &ReleaseKey,
        history: &ReleaseHistory,
        report: &ReleaseReport,
        policy: &CompiledPolicy,
        previous: Option<&Memo>,
        now: jiff::Timestamp,
    ) -> (HealView, Vec<Event>) {
        let remembered = self.heals.lock().expect("heals").remove(key);
        let mut st = remembered.unwrap_or_else(|| previous.map(|m| crate::heal::HealState::resume(&m.status.full(), now, Instant::now())).unwrap_or_default());
        let mut events = Vec::new();
        if report.drifted && report.error.is_none() && self.writer.leadership.leads_for(&key.0) {
            let spec = &policy.spec().heal;
            let latest = history.latest();
            let first_drift = previous
                .and_then(|m| m.status.status().first_drift_time).and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .unwrap_or(now);
            st.times.retain(|t| t.elapsed() < crate::heal::RATE_WINDOW);
            let heals_last_hour: Vec<Duration> = st.times.iter().map(|t| t.elapsed()).collect();
            let status = latest.status.to_string();
            let facts = crate::heal::GuardFacts {
                pending: latest.status.is_pending().then_some((latest.revision, status.as_str())),
                age: Duration::from_millis((now.as_millisecond() - first_drift.as_millisecond()).max(0) as u64),
                after: (spec.after.as_str(), policy.heal_after),
                heals_last_hour: &heals_last_hour,
                max_per_hour: spec.max_per_hour,
                backoff: st.retry_at.map(|t| t.saturating_duration_since(Instant::now())).zip(st.condition.clone()),
            };
            match crate::heal::guard(&facts) {
                crate::heal::Guard::Wait { condition, recheck_in } => {
                    st.condition = Some(condition);
                    if let Some(delay) = recheck_in {
                        self.enqueue_after(Work::Release(key.0.clone(), key.1.clone()), delay);
                    }
                }
                crate::heal::Guard::Heal => {
                    let decoded = match history.reference() {
                        Some(r) => crate::check::decoded(&self.store, Some(&self.cache), r).await.ok(),
                        None => None,
                    };
                    if let Some(decoded) = decoded {
                        let compare = policy.check_settings();
                        let observed = crate::cluster::heal::observe(&self.resolver, &decoded, report, &compare).await;
                        let window = crate::heal::CONTEST_WINDOW.max(policy.heal_after);
                        let mut plan = crate::heal::plan(observed, spec, decoded.release.apply_method, &mut st, window, Instant::now());
                        let results = self.writer.heal(&key.0, std::mem::take(&mut plan.actions)).await;
                        let outcome = crate::heal::record(&mut st, plan, results, Instant::now(), now);
                        for _ in &outcome.newly_contested {
                            self.metrics.heals_total.with_label_values(&[&key.0, &key.1, "contested"]).inc();
                        }
                        if let Some(result) = outcome.result {
                            self.metrics.heals_total.with_label_values(&[&key.0, &key.1, &result.to_lowercase()]).inc();
                            // Look again at once: the report should show the result of the heal.
                            self.enqueue(Work::Release(key.0.clone(), key.1.clone()));
                        }
                        events = outcome.events;
                    }
                }
            }
        }
        st.show_contested();
        let view = HealView { heals: st.total, last_heal: st.last.clone(), condition: st.condition.clone() };
        self.heals.lock().expect("heals").insert(key.clone(), st);
        (view, events)
    }

    /// Writes the status of the policies this controller answers for (with controllers split
    /// by `--watch-namespaces`, each would otherwise overwrite the others' counts with its own).
    async fn reconcile_policy_status(&self) -> Settled {
        if !self.writer.leadership.leads() {
            return Settled::Done;
        }
        let policies: Vec<Arc<CompiledPolicy>> = self.policies.read().expect("policies").iter().filter(|p| self.may_select(&p.policy)).cloned().collect();
        let writes = if self.settings.shards > 1 {
            // The other shards' reports are written by other replicas: counted from what the
            // reports' watch says (once listed: its listing asks again).
            let tallies = self.tallies.lock().expect("tallies");
            let (true, tallies) = &*tallies else { return Settled::Done };
            let last = self.policy_written.lock().expect("policy status memo");
            decide::policy_writes(&policies, tallies.values(), &last, jiff::Timestamp::now())
        } else {
            let index = self.index();
            let last = self.policy_written.lock().expect("policy status memo");
            decide::policy_writes(&policies, index.all_written(), &last, jiff::Timestamp::now())
        };
        let mut settled = Settled::Done;
        for (key, comparable, since, write) in writes {
            match self.writer.send(&write).await {
                Ok(Sent::Written) => {
                    self.policy_written.lock().expect("policy status memo").insert(key, (comparable, since, Instant::now()));
                }
                Ok(Sent::Dropped) => {}
                Err(e) => {
                    tracing::warn!(policy = key, error = %e, "cannot write policy status");
                    settled = Settled::Retry;
                }
            }
        }
        settled
    }
}
