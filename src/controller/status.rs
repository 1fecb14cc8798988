//! What the controller writes: DriftReport status (conditions merged by type, times kept when
//! nothing changed), policy status, and the Events of transitions. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::{Event, EventType};
use serde_json::{Value, json};

use super::policy::CompiledPolicy;
use crate::api::{DriftReportStatus, ReleaseInfo};
use crate::report::ReleaseReport;
use crate::drift::ObjectState;
use crate::helm::ReleaseHistory;
use crate::metrics::ReleaseSeries;

pub const MAX_RESOURCES: usize = 50;
pub const MAX_FIELDS: usize = 20;

/// A status as written: `comparable` leaves out what changes on every check (the check
/// time), so "nothing changed" means no write. Kept for every release, so kept small: the
/// status as compact JSON text (a `Value` tree of the same status is several times larger:
/// memory, issue 18), read back on the rare occasions a reconcile needs a part of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    /// A digest of the status without its check time: equal digests, nothing to write.
    pub comparable: [u8; 32],
    text: Box<str>,
}

/// The SHA-256 of a status without `lastCheckTime`.
pub fn comparable(st: &DriftReportStatus) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let without = DriftReportStatus { last_check_time: None, ..st.clone() };
    Sha256::digest(serde_json::to_vec(&without).expect("a status serialises")).into()
}

impl Written {
    pub fn from_status(st: &DriftReportStatus) -> Self {
        Written { comparable: comparable(st), text: serde_json::to_string(st).expect("status serialises").into() }
    }

    /// The whole status, as it is sent.
    pub fn full(&self) -> Value {
        serde_json::from_str(&self.text).expect("written from a status")
    }

    /// The status as it was written, parsed (once per use: read what you need from it).
    pub fn status(&self) -> DriftReportStatus {
        serde_json::from_str(&self.text).expect("written from a status")
    }

    /// The reason of the `Ready` condition when it is `False` (why the last check could not run).
    pub fn not_ready_reason(&self) -> Option<String> {
        self.status().conditions.into_iter().find(|c| c.type_ == "Ready" && c.status == "False").map(|c| c.reason)
    }
}

pub struct Built {
    pub written: Written,
    pub drifted: bool,
    pub unhealthy: bool,
    pub health_message: String,
    pub drift_message: String,
    first_drift: Option<jiff::Timestamp>,
}

impl Built {
    pub fn series<'a>(&self, r: &'a ReleaseReport) -> ReleaseSeries<'a> {
        ReleaseSeries {
            namespace: &r.namespace,
            release: &r.name,
            chart: &r.chart,
            chart_version: &r.chart_version,
            app_version: &r.app_version,
            status: r.status.as_str(),
            last_deployed: r.last_deployed.map(|t| t.as_second() as f64),
            drifted: self.drifted,
            drifted_resources: r.summary.modified + r.summary.missing + r.summary.added,
            first_drift: self.first_drift.map(|t| t.as_second() as f64),
        }
    }
}

fn condition(previous: Option<&DriftReportStatus>, type_: &str, status: &str, reason: &str, message: String, now: jiff::Timestamp) -> Condition {
    let kept = previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == type_)).filter(|c| c.status == status).map(|c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: kept.unwrap_or(Time(now)),
        observed_generation: None,
    }
}

/// What healing adds to a report (Heal mode only).
#[derive(Clone, Debug, Default)]
pub struct HealView {
    pub heals: u32,
    pub last_heal: Option<Value>,
    /// The `Healed` condition: status, reason, message.
    pub condition: Option<(String, String, String)>,
}

/// `history` is None for a release that has no record left (`LostRecords`).
pub fn build(r: &ReleaseReport, policy: &str, previous: Option<&Written>, now: jiff::Timestamp, history: Option<&ReleaseHistory>, heal: Option<&HealView>) -> Built {
    let previous = previous.map(Written::status);
    let previous = previous.as_ref();
    let drifted_objects: Vec<&crate::report::ResourceReport> = r
        .resources
        .iter()
        .filter(|o| o.state.is_drift())
        .collect();
    let drifted = r.drifted;
    let names: Vec<String> = drifted_objects.iter().take(5).map(|o| describe_object(o)).collect();
    let more = drifted_objects.len().saturating_sub(5);
    let drift_message = if drifted {
        format!(
            "{} of {} resources drifted: {}{}",
            drifted_objects.len(),
            r.summary.resources,
            names.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        )
    } else {
        format!("all {} resources match revision {}", r.summary.resources, r.revision)
    };
    let (healthy, health_reason, health_message) = crate::diagnose::health_condition(history, &r.findings);
    let unhealthy = !healthy;
    let mut conditions = Vec::new();
    match &r.error {
        Some(e) => {
            let reason = r.error_kind.map_or("CheckFailed", |k| k.reason());
            conditions.push(condition(previous, "Drifted", "Unknown", reason, e.clone(), now));
            conditions.push(condition(previous, "Ready", "False", reason, e.clone(), now));
        }
        None => {
            let reason = if !drifted {
                "InSync"
            } else if r.summary.modified > 0 {
                "ResourcesModified"
            } else if r.summary.missing > 0 {
                "ResourcesMissing"
            } else {
                "ResourcesAdded"
            };
            conditions.push(condition(previous, "Drifted", if drifted { "True" } else { "False" }, reason, drift_message.clone(), now));
            let checked = format!("checked {} of {} resources", r.summary.resources - r.summary.errors, r.summary.resources);
            conditions.push(condition(previous, "Ready", "True", "Checked", checked, now));
        }
    }
    conditions.push(condition(previous, "ReleaseHealthy", if unhealthy { "False" } else { "True" }, &health_reason, health_message.clone(), now));
    if let Some((st, reason, message)) = heal.and_then(|h| h.condition.clone()) {
        conditions.push(condition(previous, "Healed", &st, &reason, message, now));
    }

    let first_drift = drifted.then(|| {
        previous.and_then(|p| p.first_drift_time.as_deref()).and_then(|t| t.parse::<jiff::Timestamp>().ok()).unwrap_or(now)
    });
    let mut truncated = drifted_objects.len() > MAX_RESOURCES;
    let resources: Vec<crate::report::ResourceReport> = r
        .resources
        .iter()
        .filter(|o| o.state != ObjectState::InSync)
        .take(MAX_RESOURCES)
        .cloned()
        .map(|mut o| {
            if o.fields.len() > MAX_FIELDS {
                o.fields.truncate(MAX_FIELDS);
                truncated = true;
            }
            o
        })
        .collect();
    let status = DriftReportStatus {
        release: Some(ReleaseInfo {
            name: r.name.clone(),
            namespace: r.namespace.clone(),
            revision: r.revision,
            chart: r.chart.clone(),
            chart_version: r.chart_version.clone(),
            chart_ref: if r.chart.is_empty() { String::new() } else { format!("{}-{}", r.chart, r.chart_version) },
            app_version: r.app_version.clone(),
            status: r.status.to_string(),
            last_deployed: r.last_deployed.map(|t| t.to_string()),
            apply_method: r.apply_method.to_string(),
        }),
        policy: Some(policy.to_string()),
        drift: Some(if r.error.is_some() { "Unknown" } else if drifted { "Drifted" } else { "InSync" }.to_string()),
        drifted_resources: Some(format!("{}/{}", drifted_objects.len(), r.summary.resources)),
        summary: Some(r.summary),
        resources,
        truncated,
        operations: r.operations().into_iter().take(MAX_RESOURCES).collect(),
        findings: r.findings.clone(),
        first_drift_time: first_drift.map(|t| t.to_string()),
        last_check_time: Some(now.to_string()),
        heals: heal.map_or(0, |h| h.heals),
        last_heal: heal.and_then(|h| h.last_heal.clone()),
        conditions,
    };
    Built { written: Written::from_status(&status), drifted, unhealthy, health_message, drift_message, first_drift }
}

/// `Kind/name`, and what happened to its first drifted field: who, or that Kubernetes recorded
/// nobody, and when the controller first saw it.
fn describe_object(o: &crate::report::ResourceReport) -> String {
    let name = format!("{}/{}", o.kind, o.name);
    let seen = |t: &Option<String>| t.as_ref().map(|t| format!(", first seen {t}")).unwrap_or_default();
    if o.state == ObjectState::Missing {
        return format!("{name} (deleted{})", seen(&o.seen));
    }
    let Some(f) = o.fields.first() else { return name };
    let change = match f.change {
        crate::drift::ChangeKind::Modified => "changed",
        crate::drift::ChangeKind::Removed => "removed",
        crate::drift::ChangeKind::Added => "added",
    };
    let who = match (&f.manager, &f.subresource) {
        (Some(m), Some(sub)) => format!("by {m} via {sub}"),
        (Some(m), None) => format!("by {m}"),
        (None, _) => "by unknown (Kubernetes records no owner for removed fields)".to_string(),
    };
    let more = if o.fields.len() > 1 { format!(" and {} more field(s)", o.fields.len() - 1) } else { String::new() };
    format!("{name} ({} {change} {who}{}{more})", f.path, seen(&f.seen))
}

/// Stamps `seen` on every drifted field and object of a fresh report: the time an earlier
/// report of the same release first saw the same object and path drift, else `now`. Earlier
/// reports come from memory (the last verdicts) and from the written DriftReport (across
/// restarts), so the first sighting is kept until the drift ends.
pub fn stamp_seen(report: &mut ReleaseReport, earlier: &[&[crate::report::ResourceReport]], now: jiff::Timestamp) {
    use std::collections::HashMap;
    // First sightings by (object, path); the object's own sighting has the empty path (a
    // field's path is a JSON pointer, never empty).
    let object_key = |r: &crate::report::ResourceReport| format!("{}|{}|{}|{}", r.api_version, r.kind, r.namespace.as_deref().unwrap_or(""), r.name);
    let mut first: HashMap<(String, String), String> = HashMap::new();
    let mut keep_earliest = |key: (String, String), t: &str| {
        let e = first.entry(key).or_insert_with(|| t.to_string());
        if t < e.as_str() {
            *e = t.to_string();
        }
    };
    for r in earlier.iter().flat_map(|list| list.iter()).filter(|r| r.state.is_drift()) {
        let k = object_key(r);
        let sightings = r.seen.iter().map(|t| (String::new(), t)).chain(r.fields.iter().filter_map(|f| Some((f.path.clone(), f.seen.as_ref()?))));
        for (path, t) in sightings {
            keep_earliest((k.clone(), path), t);
        }
    }
    // To the second, as managedFields times are: the watch's latency is finer than anyone reads.
    let now = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string();
    for r in report.resources.iter_mut() {
        if !r.state.is_drift() {
            r.seen = None;
            continue;
        }
        let k = object_key(r);
        let mut object_seen = first.get(&(k.clone(), String::new())).cloned();
        for f in r.fields.iter_mut() {
            let t = first.get(&(k.clone(), f.path.clone())).cloned().unwrap_or_else(|| now.clone());
            if object_seen.as_ref().is_none_or(|o| &t < o) {
                object_seen = Some(t.clone());
            }
            f.seen = Some(t);
        }
        r.seen = Some(object_seen.unwrap_or_else(|| now.clone()));
    }
}

/// The Event of a drift transition, if this check made one.
pub fn transition_event(previously_drifted: Option<bool>, b: &Built) -> Option<Event> {
    match (previously_drifted, b.drifted) {
        (Some(true), true) | (None | Some(false), false) => None,
        (_, true) => Some(Event {
            type_: EventType::Warning,
            reason: "DriftDetected".into(),
            note: Some(b.drift_message.clone()),
            action: "Check".into(),
            secondary: None,
        }),
        (Some(true), false) => Some(Event {
            type_: EventType::Normal,
            reason: "DriftResolved".into(),
            note: Some(b.drift_message.clone()),
            action: "Check".into(),
            secondary: None,
        }),
    }
}

/// A policy's status without times (the caller adds them when it writes).
pub fn policy_status(c: &CompiledPolicy, matched: usize, drifted: usize, unhealthy: usize) -> Value {
    let p = &c.policy;
    let (status, reason, message) = match c.problem.clone() {
        Some((reason, message)) => ("False", reason, message),
        None => ("True", "Active", format!("{matched} release(s) covered")),
    };
    json!({
        "observedGeneration": p.metadata.generation,
        "matchedReleases": matched,
        "driftedReleases": drifted,
        "unhealthyReleases": unhealthy,
        "conditions": [{"type": "Ready", "status": status, "reason": reason, "message": message,
                        "observedGeneration": p.metadata.generation}]
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::report::ResourceReport;
    use crate::helm::{Driver, RecordMeta, ReleaseStatus};

    pub(crate) fn history(status: ReleaseStatus) -> ReleaseHistory {
        let rec = RecordMeta {
            driver: Driver::Secret,
            namespace: "prod".into(),
            object_name: "sh.helm.release.v1.shop.v2".into(),
            release: "shop".into(),
            revision: 2,
            status,
            labels: Default::default(),
            created_at: None,
            modified_at: None,
            uid: None,
        };
        ReleaseHistory { namespace: "prod".into(), name: "shop".into(), driver: Driver::Secret, revisions: vec![rec] }
    }

    pub(crate) fn report(drifted: bool) -> ReleaseReport {
        let state = if drifted { ObjectState::Modified } else { ObjectState::InSync };
        let resources = vec![ResourceReport {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("prod".into()),
            name: "cm".into(),
            state,
            fields: vec![],
            message: None,
            operations: vec![],
            seen: None,
            change_token: None,
            transient: false,
        }];
        ReleaseReport {
            name: "shop".into(),
            namespace: "prod".into(),
            revision: 2,
            chart: "fullstack".into(),
            chart_version: "1.0.0".into(),
            app_version: "2".into(),
            status: ReleaseStatus::Deployed,
            last_deployed: None,
            apply_method: Default::default(),
            drifted,
            summary: crate::report::summarize(&resources),
            resources,
            findings: vec![],
            policy: None,
            error: None,
            error_kind: None,
            confirmed_away: 0,
            transient: false,
        }
    }

    #[test]
    fn unchanged_checks_compare_equal_and_keep_times() {
        let t1: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t2: jiff::Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let a = build(&report(true), "ns/p", None, t1, Some(&history(ReleaseStatus::Deployed)), None);
        let b = build(&report(true), "ns/p", Some(&a.written), t2, Some(&history(ReleaseStatus::Deployed)), None);
        assert_eq!(a.written.comparable, b.written.comparable, "only the check time moved: no write");
        assert_ne!(a.written.full(), b.written.full());
        assert_eq!(b.written.full()["firstDriftTime"], "2026-01-01T00:00:00Z");
        let c = build(&report(false), "ns/p", Some(&b.written), t2, Some(&history(ReleaseStatus::Deployed)), None);
        let drifted = c.written.full()["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Drifted").unwrap().clone();
        assert_eq!((drifted["status"].as_str(), drifted["reason"].as_str()), (Some("False"), Some("InSync")));
        assert_eq!(drifted["lastTransitionTime"], "2026-01-01T00:05:00Z");
        assert!(c.written.status().first_drift_time.is_none());
    }

    #[test]
    fn events_only_on_transitions() {
        let t: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let d = build(&report(true), "ns/p", None, t, Some(&history(ReleaseStatus::Deployed)), None);
        let s = build(&report(false), "ns/p", None, t, Some(&history(ReleaseStatus::Deployed)), None);
        assert_eq!(transition_event(None, &d).unwrap().reason, "DriftDetected");
        assert_eq!(transition_event(Some(false), &d).unwrap().reason, "DriftDetected");
        assert!(transition_event(Some(true), &d).is_none());
        assert_eq!(transition_event(Some(true), &s).unwrap().reason, "DriftResolved");
        assert!(transition_event(None, &s).is_none());
        assert!(transition_event(Some(false), &s).is_none());
    }

    fn drifted_field(path: &str, manager: Option<&str>) -> crate::drift::FieldDrift {
        crate::drift::FieldDrift {
            path: path.into(),
            desired: Some(serde_json::json!(1)),
            live: None,
            change: if manager.is_some() { crate::drift::ChangeKind::Modified } else { crate::drift::ChangeKind::Removed },
            manager: manager.map(str::to_string),
            operation: manager.map(|_| "Update".to_string()),
            subresource: None,
            time: None,
            candidates: vec![],
            seen: None,
            locator: vec![],
        }
    }

    fn with_fields(fields: Vec<crate::drift::FieldDrift>) -> ReleaseReport {
        let mut r = report(true);
        r.resources[0].fields = fields;
        r
    }

    #[test]
    fn seen_is_the_first_sighting_while_the_drift_lasts() {
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let mut first = with_fields(vec![drifted_field("/data/a", None)]);
        stamp_seen(&mut first, &[], t("2026-01-01T00:00:00.123456789Z"));
        assert_eq!(first.resources[0].fields[0].seen.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(first.resources[0].seen.as_deref(), Some("2026-01-01T00:00:00Z"));
        // A later check: the old field keeps its time, a new one gets the check's.
        let mut second = with_fields(vec![drifted_field("/data/a", None), drifted_field("/data/b", Some("kubectl-edit"))]);
        stamp_seen(&mut second, &[&first.resources], t("2026-01-01T00:05:00Z"));
        let seen: Vec<Option<&str>> = second.resources[0].fields.iter().map(|f| f.seen.as_deref()).collect();
        assert_eq!(seen, vec![Some("2026-01-01T00:00:00Z"), Some("2026-01-01T00:05:00Z")]);
        assert_eq!(second.resources[0].seen.as_deref(), Some("2026-01-01T00:00:00Z"));
        // Of two earlier sources (memory, the written report) the earlier time wins.
        let mut written = first.clone();
        written.resources[0].fields[0].seen = Some("2025-12-31T23:00:00Z".into());
        let mut third = with_fields(vec![drifted_field("/data/a", None)]);
        stamp_seen(&mut third, &[&second.resources, &written.resources], t("2026-01-01T00:10:00Z"));
        assert_eq!(third.resources[0].fields[0].seen.as_deref(), Some("2025-12-31T23:00:00Z"));
        // Once back in sync the episode ends: a later drift of the same path is seen anew.
        let mut fixed = report(false);
        stamp_seen(&mut fixed, &[&third.resources], t("2026-01-01T00:15:00Z"));
        assert_eq!(fixed.resources[0].seen, None);
        let mut again = with_fields(vec![drifted_field("/data/a", None)]);
        stamp_seen(&mut again, &[&fixed.resources], t("2026-01-01T00:20:00Z"));
        assert_eq!(again.resources[0].fields[0].seen.as_deref(), Some("2026-01-01T00:20:00Z"));
    }

    #[test]
    fn messages_say_who_or_that_nobody_is_recorded_and_when() {
        let t: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut r = with_fields(vec![drifted_field("/data/a", None)]);
        stamp_seen(&mut r, &[], t);
        let b = build(&r, "ns/p", None, t, Some(&history(ReleaseStatus::Deployed)), None);
        assert_eq!(
            b.drift_message,
            "1 of 1 resources drifted: ConfigMap/cm (/data/a removed by unknown (Kubernetes records no owner for removed fields), first seen 2026-01-01T00:00:00Z)"
        );
        let mut r = with_fields(vec![drifted_field("/data/a", Some("kubectl-edit")), drifted_field("/data/b", None)]);
        stamp_seen(&mut r, &[], t);
        let b = build(&r, "ns/p", None, t, Some(&history(ReleaseStatus::Deployed)), None);
        assert!(b.drift_message.contains("(/data/a changed by kubectl-edit, first seen 2026-01-01T00:00:00Z and 1 more field(s))"), "{}", b.drift_message);
        assert!(!b.drift_message.contains("by unknown"), "only the first field is described: {}", b.drift_message);
    }

    #[test]
    fn unhealthy_releases() {
        let t: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let b = build(&report(false), "ns/p", None, t, Some(&history(ReleaseStatus::PendingUpgrade)), None);
        assert!(b.unhealthy);
        let h = b.written.full()["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "ReleaseHealthy").unwrap().clone();
        assert_eq!((h["status"].as_str(), h["reason"].as_str()), (Some("False"), Some("Pending")));
    }
}
