//! The reconcile's decisions, as data: from what a check found and what was written before,
//! which report to write (if any), with which Events, and what to remember once it is written;
//! which policy statuses to write. Pure: the reconcile carries the facts in and the writes out.

use std::time::{Duration, Instant};

use kube::runtime::events::{Event, EventType};
use serde_json::json;

use super::index::{KindKey, Memo, ObjectId, ReleaseKey, Tally};
use super::policy::CompiledPolicy;
use super::status::{self, Built, HealView};
use super::writer::Write;
use crate::helm::{ReleaseHistory, ReleaseStatus};
use crate::report::{FindingResource, ReleaseReport};

/// How often an unchanged report's lastCheckTime is refreshed: once in 1–2 h (or the policy
/// interval, if longer), spread by release so that a thousand unchanged reports are not a
/// thousand writes at the same moment. A changed status is written at once.
pub const REFRESH: Duration = Duration::from_secs(3600);

pub fn refresh_period(key: &ReleaseKey, interval: Duration) -> Duration {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let base = REFRESH.max(interval);
    base + base.mul_f64((h.finish() % 1000) as f64 / 1000.0)
}

/// What a reconcile knows once its check ran.
pub struct Facts<'a> {
    pub key: &'a ReleaseKey,
    pub report: &'a ReleaseReport,
    /// None: the release has no record left (`LostRecords`).
    pub history: Option<&'a ReleaseHistory>,
    pub policy: &'a CompiledPolicy,
    /// What was last written for the release (None: no report).
    pub previous: Option<&'a Memo>,
    pub heal: Option<&'a HealView>,
    /// Events of this reconcile's heal, published with the report.
    pub heal_events: Vec<Event>,
    pub now: jiff::Timestamp,
}

pub struct Decision {
    pub built: Built,
    /// The report to write: None when nothing changed and no refresh is due.
    pub write: Option<Write>,
    /// What to remember once the write went through.
    pub memo: Memo,
    /// Whether the policy's counts change with this write.
    pub policy_counts_change: bool,
}

/// The report to write for a checked release, with the Events of its transitions (drift
/// detected or resolved, the release turning unhealthy) after the heal's own.
pub fn report(f: Facts) -> Decision {
    let built = status::build(f.report, &f.policy.key, f.previous.map(|m| &m.status), f.now, f.history, f.heal);
    let changed = f.previous.is_none_or(|m| m.status.comparable != built.written.comparable);
    let stale = f.previous.is_none_or(|m| m.written_at.elapsed() >= refresh_period(f.key, f.policy.interval));
    let mut events = f.heal_events;
    events.extend(status::transition_event(f.previous.map(|m| m.tally.drifted), &built));
    // A release that turns uncheckable (or uncheckable for another reason) says why, once.
    if let (Some(kind), Some(message)) = (f.report.error_kind, &f.report.error)
        && f.previous.and_then(|m| m.status.not_ready_reason()).as_deref() != Some(kind.reason())
    {
        events.push(Event { type_: EventType::Warning, reason: kind.reason().into(), note: Some(message.clone()), action: "Check".into(), secondary: None });
    }
    if built.unhealthy && f.previous.is_none_or(|m| !m.tally.unhealthy) {
        events.push(Event { type_: EventType::Warning, reason: "ReleaseUnhealthy".into(), note: Some(built.health_message.clone()), action: "Check".into(), secondary: None });
    }
    let write = (changed || stale).then(|| Write::Report {
        namespace: f.key.0.clone(),
        name: f.key.1.clone(),
        status: built.written.full(),
        exists: f.previous.is_some(),
        events,
    });
    let policy_counts_change = f.previous.is_none_or(|m| m.tally.drifted != built.drifted || m.tally.policy != f.policy.key);
    let tally = Tally { policy: f.policy.key.clone(), drifted: built.drifted, unhealthy: built.unhealthy };
    let memo = Memo { tally, status: built.written.clone(), written_at: Instant::now() };
    Decision { built, write, memo, policy_counts_change }
}

/// An object of the index (kind, id) as a finding names it.
pub fn stamped_resource(((api_version, kind), (ns, name)): (KindKey, ObjectId)) -> FindingResource {
    FindingResource { api_version, kind, namespace: (!ns.is_empty()).then_some(ns), name, state: None, detail: None }
}

/// The objects stamped for a release that its manifest lacks (`OrphanedResources`): only for
/// a deployed release that could be checked (during an upgrade, or after a failed one, the
/// newer revision's objects are not orphans).
pub fn orphans(stamped: Vec<(KindKey, ObjectId)>, latest: &ReleaseStatus, report: &ReleaseReport) -> Vec<FindingResource> {
    if *latest != ReleaseStatus::Deployed || report.error.is_some() {
        return Vec::new();
    }
    stamped
        .into_iter()
        .filter(|((api_version, kind), (ns, name))| {
            !report.resources.iter().any(|r| &r.api_version == api_version && &r.kind == kind && r.namespace.as_deref().unwrap_or("") == ns && &r.name == name)
        })
        .map(stamped_resource)
        .collect()
}

/// The report of a release with no record left whose objects are still live and stamped for
/// it (`LostRecords`): nothing to compare against, and the finding names the objects.
pub fn lost_records_report(key: &ReleaseKey, objects: Vec<FindingResource>) -> ReleaseReport {
    let count = objects.len();
    ReleaseReport {
        findings: vec![crate::diagnose::lost_records(&key.0, &key.1, objects)],
        error: Some(format!("release {} has no Helm record left ({count} object(s) are still stamped for it): nothing to compare against", key.1)),
        error_kind: Some(crate::report::CheckErrorKind::NoRecords),
        ..ReleaseReport::new(&key.1, &key.0, 0, ReleaseStatus::Unknown)
    }
}

/// A policy status as last written: what it said (without times), since when its `Ready`
/// condition has had that status, and when it was written.
pub type PolicyWritten = (serde_json::Value, String, Instant);

/// The status writes of the policies this controller answers for, from what is written for
/// each release ([`Tally`]: its policy, whether it drifted, whether it is unhealthy). An
/// unchanged status is written again once an interval (for
/// `lastScanTime`). Returns each write with the comparable status and transition time to
/// remember once it went through.
pub fn policy_writes<'m>(
    policies: &[std::sync::Arc<CompiledPolicy>],
    written: impl Iterator<Item = &'m Tally> + Clone,
    last: &std::collections::HashMap<String, PolicyWritten>,
    now: jiff::Timestamp,
) -> Vec<(String, serde_json::Value, String, Write)> {
    let mut out = Vec::new();
    for p in policies {
        let mine: Vec<&Tally> = written.clone().filter(|t| t.policy == p.key).collect();
        let comparable = status::policy_status(p, mine.len(), mine.iter().filter(|t| t.drifted).count(), mine.iter().filter(|t| t.unhealthy).count());
        let before = last.get(&p.key);
        if before.is_some_and(|(c, _, at)| c == &comparable && at.elapsed() < p.interval) {
            continue;
        }
        // The condition's transition time moves only when its status does.
        let ready = |v: &serde_json::Value| v["conditions"][0]["status"].clone();
        let transition = match before {
            Some((c, since, _)) if ready(c) == ready(&comparable) => since.clone(),
            _ => now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        };
        let mut full = comparable.clone();
        full["lastScanTime"] = json!(now.to_string());
        full["conditions"][0]["lastTransitionTime"] = json!(transition);
        let write = Write::PolicyStatus { namespace: p.namespace().to_string(), name: p.policy.metadata.name.clone().unwrap_or_default(), status: full };
        out.push((p.key.clone(), comparable, transition, write));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::api::{DriftPolicy, DriftPolicySpec};
    use crate::controller::policy::Tenancy;
    use crate::controller::status::tests::{history, report as checked};
    use crate::helm::ReleaseStatus;
    use crate::report::CheckErrorKind;

    fn policy(ns: &str, name: &str) -> CompiledPolicy {
        let mut p = DriftPolicy::new(name, DriftPolicySpec::default());
        p.metadata.namespace = Some(ns.into());
        p.metadata.generation = Some(1);
        CompiledPolicy::compile(&Tenancy::default(), p)
    }

    fn key() -> ReleaseKey {
        ("prod".into(), "shop".into())
    }

    fn decide(r: &ReleaseReport, previous: Option<&Memo>, status: ReleaseStatus) -> Decision {
        let (k, h, p) = (key(), history(status), policy("prod", "p"));
        report(Facts { key: &k, report: r, history: Some(&h), policy: &p, previous, heal: None, heal_events: vec![], now: jiff::Timestamp::now() })
    }

    fn reasons(d: &Decision) -> Vec<String> {
        match &d.write {
            Some(Write::Report { events, .. }) => events.iter().map(|e| e.reason.clone()).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn a_first_check_makes_the_report_and_an_unchanged_one_writes_nothing() {
        let first = decide(&checked(true), None, ReleaseStatus::Deployed);
        match &first.write {
            Some(Write::Report { namespace, name, exists, .. }) => assert_eq!((namespace.as_str(), name.as_str(), *exists), ("prod", "shop", false)),
            other => panic!("{other:?}"),
        }
        assert_eq!(reasons(&first), vec!["DriftDetected"]);
        assert!(first.policy_counts_change);
        assert_eq!((first.memo.tally.policy.as_str(), first.memo.tally.drifted), ("prod/p", true));
        let again = decide(&checked(true), Some(&first.memo), ReleaseStatus::Deployed);
        assert!(again.write.is_none(), "nothing changed and no refresh is due");
        assert!(!again.policy_counts_change);
        // Resolved: written, with its Event, into the existing report.
        let resolved = decide(&checked(false), Some(&first.memo), ReleaseStatus::Deployed);
        assert!(matches!(&resolved.write, Some(Write::Report { exists: true, .. })));
        assert_eq!(reasons(&resolved), vec!["DriftResolved"]);
        assert!(resolved.policy_counts_change);
    }

    fn stamped(objects: &[(&str, &str, &str, &str)]) -> Vec<(KindKey, ObjectId)> {
        objects.iter().map(|(av, k, ns, n)| ((av.to_string(), k.to_string()), (ns.to_string(), n.to_string()))).collect()
    }

    #[test]
    fn orphans_are_stamped_objects_the_manifest_lacks_of_a_deployed_checked_release() {
        // The report covers ConfigMap prod/cm; a Secret and a ClusterRole are stamped too.
        let live = stamped(&[("v1", "ConfigMap", "prod", "cm"), ("v1", "Secret", "prod", "old"), ("rbac.authorization.k8s.io/v1", "ClusterRole", "", "viewer")]);
        let found = orphans(live.clone(), &ReleaseStatus::Deployed, &checked(false));
        let names: Vec<(Option<&str>, &str)> = found.iter().map(|r| (r.namespace.as_deref(), r.name.as_str())).collect();
        assert_eq!(names, vec![(Some("prod"), "old"), (None, "viewer")], "cluster-scoped objects have no namespace");
        // Mid-upgrade or after a failure, the newer revision's objects are not orphans.
        for status in [ReleaseStatus::PendingUpgrade, ReleaseStatus::Failed] {
            assert!(orphans(live.clone(), &status, &checked(false)).is_empty(), "{status}");
        }
        // A release that could not be checked has no list of its own objects to compare with.
        let mut broken = checked(false);
        broken.error = Some("cannot decode".into());
        assert!(orphans(live, &ReleaseStatus::Deployed, &broken).is_empty());
    }

    #[test]
    fn a_release_with_no_record_left_is_reported_as_lost_with_its_objects() {
        let objects: Vec<FindingResource> = stamped(&[("apps/v1", "Deployment", "prod", "web"), ("v1", "Service", "prod", "web")]).into_iter().map(stamped_resource).collect();
        let r = lost_records_report(&key(), objects);
        assert_eq!((r.name.as_str(), r.namespace.as_str(), r.revision), ("shop", "prod", 0));
        assert_eq!(r.error_kind, Some(CheckErrorKind::NoRecords));
        assert!(r.error.as_deref().unwrap().contains("2 object(s) are still stamped"), "{:?}", r.error);
        assert_eq!(r.findings.len(), 1);
        assert_eq!(r.findings[0].kind.as_str(), "LostRecords");
        assert_eq!(r.findings[0].resources.len(), 2);
    }

    #[test]
    fn an_unchanged_report_is_refreshed_once_its_period_is_over() {
        let first = decide(&checked(false), None, ReleaseStatus::Deployed);
        let mut old = first.memo.clone();
        old.written_at = Instant::now() - REFRESH * 2;
        let refreshed = decide(&checked(false), Some(&old), ReleaseStatus::Deployed);
        assert!(refreshed.write.is_some());
        assert!(reasons(&refreshed).is_empty(), "a refresh is no transition");
    }

    #[test]
    fn a_release_turning_unhealthy_or_uncheckable_says_so_once() {
        let failed = decide(&checked(false), None, ReleaseStatus::Failed);
        assert_eq!(reasons(&failed), vec!["ReleaseUnhealthy"]);
        assert!(reasons(&decide(&checked(false), Some(&failed.memo), ReleaseStatus::Failed)).is_empty());
        let mut broken = checked(false);
        broken.error = Some("record sh.helm.release.v1.shop.v2: not valid base64".into());
        broken.error_kind = Some(CheckErrorKind::Decode);
        let first = decide(&broken, None, ReleaseStatus::Deployed);
        assert_eq!(reasons(&first), vec!["RecordCorrupt"]);
        let ready = first.memo.status.full()["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
        assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("RecordCorrupt")));
        assert!(decide(&broken, Some(&first.memo), ReleaseStatus::Deployed).write.is_none(), "the same failure again: nothing new");
        broken.error_kind = Some(CheckErrorKind::Read);
        assert_eq!(reasons(&decide(&broken, Some(&first.memo), ReleaseStatus::Deployed)), vec!["RecordUnreadable"]);
        assert_eq!(broken.result(), "read_error");
        assert_eq!((checked(true).result(), checked(false).result()), ("drifted", "in_sync"));
    }

    #[test]
    fn heal_events_come_first() {
        let (k, h, p) = (key(), history(ReleaseStatus::Deployed), policy("prod", "p"));
        let healed = Event { type_: EventType::Normal, reason: "DriftHealed".into(), note: None, action: "Heal".into(), secondary: None };
        let r = checked(true);
        let d = report(Facts { key: &k, report: &r, history: Some(&h), policy: &p, previous: None, heal: None, heal_events: vec![healed], now: jiff::Timestamp::now() });
        assert_eq!(reasons(&d), vec!["DriftHealed", "DriftDetected"]);
    }

    #[test]
    fn policy_statuses_count_their_releases_and_are_not_rewritten_unchanged() {
        let policies = vec![Arc::new(policy("prod", "p")), Arc::new(policy("prod", "q"))];
        let drifted = decide(&checked(true), None, ReleaseStatus::Deployed).memo;
        let failed = decide(&checked(false), None, ReleaseStatus::Failed).memo;
        let memos = [drifted, failed];
        let mut last = HashMap::new();
        let writes = policy_writes(&policies, memos.iter().map(|m| &m.tally), &last, jiff::Timestamp::now());
        assert_eq!(writes.len(), 2);
        let (key, comparable, since, write) = &writes[0];
        assert_eq!(key, "prod/p");
        assert_eq!((comparable["matchedReleases"].as_u64(), comparable["driftedReleases"].as_u64(), comparable["unhealthyReleases"].as_u64()), (Some(2), Some(1), Some(1)));
        match write {
            Write::PolicyStatus { namespace, name, status } => {
                assert_eq!((namespace.as_str(), name.as_str()), ("prod", "p"));
                assert!(status["lastScanTime"].is_string());
                assert_eq!(&status["conditions"][0]["lastTransitionTime"], since);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(writes[1].1["matchedReleases"].as_u64(), Some(0));
        for (key, comparable, since, _) in writes {
            last.insert(key, (comparable, since, Instant::now()));
        }
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(90);
        assert!(policy_writes(&policies, memos.iter().map(|m| &m.tally), &last, later).is_empty(), "unchanged within the interval: nothing written");
        // A third release: the counts change, the condition's transition time does not.
        let third = decide(&checked(false), None, ReleaseStatus::Deployed).memo;
        let more = [memos[0].clone(), memos[1].clone(), third];
        let writes = policy_writes(&policies[..1], more.iter().map(|m| &m.tally), &last, later);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].1["matchedReleases"].as_u64(), Some(3));
        assert_eq!(&writes[0].2, &last["prod/p"].1, "still Ready: the transition time is kept");
    }
}
