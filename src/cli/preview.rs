//! `driftwatch preview upgrade`: each drifted field of a release (from a drift check) against
//! the new manifest (rendered by the user's own `helm template`), through
//! [`crate::preview::predict_field`]. Pure: the check's report and the rendered objects in, the
//! document (its JSON output) out; the text is made from the document.

use serde::Serialize;
use serde_json::Value;

use crate::drift::{ChangeKind, ObjectState};
use crate::helm::{ApplyMethod, DesiredObject};
use crate::preview::{FieldFacts, Method, Outcome, Tally, predict_field};
use crate::report::ReleaseReport;

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub name: String,
    pub namespace: String,
    /// `upgrade` or `rollback`.
    pub operation: String,
    /// The deployed revision the drift is measured against.
    pub revision: u32,
    pub apply_method: String,
    pub force_conflicts: bool,
    pub summary: String,
    pub tally: Tally,
    pub fields: Vec<Row>,
}

/// One drifted field (or missing object) and what the operation does to it.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub api_version: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// RFC 6901 pointer (empty for a whole missing object).
    pub path: String,
    /// For a drifted field (`drift: true`): `reverted`, `kept`, `removed`, `recreated`,
    /// `conflict`, `takenOver`, `adopted`. For a field another manager owns that has not
    /// drifted (`drift: false`): `changed`, `removed`, `conflict`, `takenOver`, `unchanged`.
    pub outcome: String,
    /// Whether the field has drifted from the deployed revision (false: it has not, but a
    /// manager other than Helm owns it, alone or with Helm).
    pub drift: bool,
    /// Who made the drift, and when (as the check found them); for a field that has not
    /// drifted, the manager that owns it and when it last wrote the object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// How long ago `time` is ("21d ago").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age: Option<String>,
    /// The live value now, and after the operation (absent: no value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Reverted => "reverted",
        Outcome::Kept => "kept",
        Outcome::Removed => "removed",
        Outcome::Recreated => "recreated",
        Outcome::Conflict(_) => "conflict",
        Outcome::TakenOver(_) => "takenOver",
        Outcome::Adopted => "adopted",
    }
}

/// Whether client-side Helm patches a kind with a strategic three-way merge: the kinds compiled
/// into client-go's scheme (core and the `*.k8s.io` API groups Kubernetes serves itself).
/// Everything else is a custom resource, patched with a two-way JSON merge patch.
pub fn built_in(api_version: &str) -> bool {
    let Some((group, _)) = api_version.split_once('/') else { return true };
    const GROUPS: [&str; 18] = [
        "networking.k8s.io",
        "rbac.authorization.k8s.io",
        "storage.k8s.io",
        "admissionregistration.k8s.io",
        "apiextensions.k8s.io",
        "apiregistration.k8s.io",
        "scheduling.k8s.io",
        "coordination.k8s.io",
        "node.k8s.io",
        "discovery.k8s.io",
        "flowcontrol.apiserver.k8s.io",
        "certificates.k8s.io",
        "events.k8s.io",
        "resource.k8s.io",
        "authentication.k8s.io",
        "authorization.k8s.io",
        "internal.apiserver.k8s.io",
        "storagemigration.k8s.io",
    ];
    !group.contains('.') || GROUPS.contains(&group)
}

fn method(apply: ApplyMethod, api_version: &str, force: bool) -> Method {
    match apply {
        ApplyMethod::Ssa => Method::ServerSide { force },
        ApplyMethod::Csa if built_in(api_version) => Method::ThreeWay,
        ApplyMethod::Csa => Method::TwoWay,
    }
}

/// A not-drifted field's outcome name: what the operation does to a value another manager set.
fn owned_outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Reverted => "changed",
        Outcome::Kept | Outcome::Adopted | Outcome::Recreated => "unchanged",
        other => outcome_name(other),
    }
}

/// What a preview is made from.
pub struct Inputs<'a> {
    /// The drift check of the release, against its deployed revision.
    pub report: &'a ReleaseReport,
    /// The deployed revision's objects (the check's desired state).
    pub reference: &'a [DesiredObject],
    /// The objects the operation applies (rendered for an upgrade, a stored revision's for a
    /// rollback).
    pub new: &'a [DesiredObject],
    /// The release's live objects as read, with their `managedFields`: for the fields other
    /// managers own that have not drifted.
    pub live: &'a [Value],
    /// `--force-conflicts`.
    pub force: bool,
    /// `upgrade` or `rollback`.
    pub operation: &'a str,
    pub now: jiff::Timestamp,
}

/// The preview of an operation on a checked release: each drifted field, and each field another
/// manager owns, against the objects it applies.
pub fn preview(i: Inputs) -> Document {
    let Inputs { report, reference, new, live, force, operation, now } = i;
    let age = |t: &Option<String>| t.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()).map(|t| format!("{} ago", crate::diagnose::ago(now, t)));
    let same = |o: &DesiredObject, api_version: &str, kind: &str, name: &str, ns: Option<&str>| {
        o.api_version == api_version && o.kind == kind && o.name == name && (o.namespace.is_none() || o.namespace.as_deref() == ns)
    };
    let mut rows = Vec::new();
    let mut tally = Tally::default();
    for r in report.resources.iter().filter(|r| r.state.is_drift() || r.state == ObjectState::InSync) {
        let new_obj = new.iter().find(|o| same(o, &r.api_version, &r.kind, &r.name, r.namespace.as_deref()));
        let old_obj = reference.iter().find(|o| same(o, &r.api_version, &r.kind, &r.name, r.namespace.as_deref()));
        let row = |path: String, outcome: &Outcome, manager: Option<String>, time: Option<String>, before: Option<Value>, after: Option<Value>| Row {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            path,
            outcome: outcome_name(outcome).to_string(),
            drift: true,
            manager,
            age: age(&time),
            time,
            before,
            after,
        };
        if r.state == ObjectState::Missing {
            // Created again by the upgrade when the new manifest still has it.
            if new_obj.is_some() {
                tally.add(&Outcome::Recreated);
                rows.push(row(String::new(), &Outcome::Recreated, None, None, None, None));
            }
            continue;
        }
        let Some(new_obj) = new_obj else {
            // The new manifest drops the whole object: Helm deletes it; not a field's fate.
            continue;
        };
        let m = method(report.apply_method, &r.api_version, force);
        for f in &r.fields {
            let at = |obj: &Value| crate::drift::compare::navigate(obj, &f.locator).map(|(v, _)| v.clone());
            let old = old_obj.and_then(|o| at(&o.object));
            let new_value = at(&new_obj.object);
            let live = match f.change {
                ChangeKind::Removed => None,
                _ => f.live.clone(),
            };
            let foreign = f.manager.as_deref().filter(|m| *m != "helm");
            let facts = FieldFacts { old: old.as_ref(), new: new_value.as_ref(), live: live.as_ref(), foreign_manager: foreign };
            let (outcome, after) = predict_field(&facts, m);
            // A Secret's values are never shown: before and after keep the check's redaction.
            let (before, after) = if r.kind == "Secret" { (f.live.clone(), after.map(|_| Value::String("(redacted)".into()))) } else { (live, after) };
            tally.add(&outcome);
            rows.push(row(f.path.clone(), &outcome, f.manager.clone(), f.time.clone(), before, after));
        }
        // The fields other managers own that have not drifted: the same rules, with the live
        // value equal to the reference's.
        let Some(live_obj) = live.iter().find(|o| {
            o.get("apiVersion").and_then(Value::as_str) == Some(&r.api_version)
                && o.get("kind").and_then(Value::as_str) == Some(&r.kind)
                && o.pointer("/metadata/name").and_then(Value::as_str) == Some(&r.name)
                && o.pointer("/metadata/namespace").and_then(Value::as_str) == r.namespace.as_deref()
        }) else {
            continue;
        };
        let owned = crate::drift::managed::ManagedFields::from_object(live_obj);
        for (locator, entry) in owned.foreign_paths(&[]) {
            if locator.first() == Some(&crate::drift::managed::FieldKey::Field("status".into())) {
                continue;
            }
            let Some((live_value, path)) = crate::drift::compare::navigate(live_obj, &locator) else { continue };
            if r.fields.iter().any(|f| crate::drift::ignore::pointer_is_under(&f.path, &path) || crate::drift::ignore::pointer_is_under(&path, &f.path)) {
                continue;
            }
            let at = |obj: &Value| crate::drift::compare::navigate(obj, &locator).map(|(v, _)| v.clone());
            let old = old_obj.and_then(|o| at(&o.object));
            let new_value = at(&new_obj.object);
            let facts = FieldFacts { old: old.as_ref(), new: new_value.as_ref(), live: Some(live_value), foreign_manager: Some(&entry.manager) };
            let (outcome, after) = predict_field(&facts, m);
            let secret = |v: Option<Value>| if r.kind == "Secret" { v.map(|_| Value::String("(redacted)".into())) } else { v };
            tally.add_owned(&outcome);
            let mut owned_row = row(path, &outcome, Some(entry.manager.clone()), entry.time.clone(), secret(Some(live_value.clone())), secret(after));
            owned_row.outcome = owned_outcome_name(&outcome).to_string();
            owned_row.drift = false;
            rows.push(owned_row);
        }
    }
    // Who each part of the summary is about: the managers and the oldest change.
    let who = |key: &str| {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.outcome == key && (r.drift || matches!(key, "conflict" | "changed"))).collect();
        let mut managers: Vec<&str> = Vec::new();
        for r in &mine {
            let m = r.manager.as_deref().unwrap_or("unknown");
            if !managers.contains(&m) {
                managers.push(m);
            }
        }
        if managers.is_empty() || key == "recreated" {
            return String::new();
        }
        let oldest = mine.iter().filter(|r| r.drift).filter_map(|r| r.time.clone()).min();
        match (key, age(&oldest)) {
            ("conflict", _) => format!(" (with {})", managers.join(", ")),
            (_, Some(a)) => format!(" ({}, {a})", managers.join(", ")),
            _ => format!(" ({})", managers.join(", ")),
        }
    };
    Document {
        name: report.name.clone(),
        namespace: report.namespace.clone(),
        operation: operation.into(),
        revision: report.revision,
        apply_method: report.apply_method.to_string(),
        force_conflicts: force,
        summary: tally.sentence(operation, &who),
        tally,
        fields: rows,
    }
}

fn show(v: &Option<Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

pub fn render_text(d: &Document) -> String {
    let mut out = format!(
        "{}/{}: {} (drift against revision {}, {} apply{})\n",
        d.namespace,
        d.name,
        d.summary,
        d.revision,
        if d.apply_method == "ssa" { "server-side" } else { "client-side" },
        if d.force_conflicts { ", --force-conflicts" } else { "" }
    );
    for r in d.fields.iter().filter(|r| r.drift || r.outcome != "unchanged") {
        if !r.drift {
            let what = match r.outcome.as_str() {
                "changed" => format!("{} -> {}", show(&r.before), show(&r.after)),
                "removed" => format!("{} is removed", show(&r.before)),
                "takenOver" => format!("{} -> {} (taken over)", show(&r.before), show(&r.after)),
                "conflict" => format!("{} -> {}: CONFLICT, the {} fails without --force-conflicts", show(&r.before), show(&r.after), d.operation),
                other => other.to_string(),
            };
            let owner = r.manager.as_deref().unwrap_or("?");
            out.push_str(&format!("  {:10} {}/{} {}: {what} (owned by {owner}, not drift)\n", r.outcome, r.kind, r.name, r.path));
            continue;
        }
        let who = r.manager.as_deref().map(|m| format!(" (changed by {m}{})", r.age.as_deref().map(|a| format!(" {a}, at {}", r.time.as_deref().unwrap_or_default())).unwrap_or_default())).unwrap_or_default();
        let what = match r.outcome.as_str() {
            "recreated" => "the missing object is created again".to_string(),
            "reverted" => format!("{} -> {}", show(&r.before), show(&r.after)),
            "takenOver" => format!("{} -> {} (taken over from {})", show(&r.before), show(&r.after), r.manager.as_deref().unwrap_or("?")),
            "kept" => format!("{} stays: the drift survives the {}", show(&r.before), d.operation),
            "removed" => format!("{} is removed", show(&r.before)),
            "conflict" => format!("CONFLICT with {}: the {} fails without --force-conflicts", r.manager.as_deref().unwrap_or("?"), d.operation),
            "adopted" => format!("{} is what the new manifest sets", show(&r.before)),
            other => other.to_string(),
        };
        let at = if r.path.is_empty() { String::new() } else { format!(" {}", r.path) };
        out.push_str(&format!("  {:10} {}/{}{at}: {what}{who}\n", r.outcome, r.kind, r.name));
    }
    // Fields other managers own that the operation leaves as they are: one line per manager.
    let mut unchanged: Vec<(&str, usize)> = Vec::new();
    for r in d.fields.iter().filter(|r| !r.drift && r.outcome == "unchanged") {
        let m = r.manager.as_deref().unwrap_or("?");
        match unchanged.iter_mut().find(|(n, _)| *n == m) {
            Some((_, c)) => *c += 1,
            None => unchanged.push((m, 1)),
        }
    }
    for (m, c) in unchanged {
        out.push_str(&format!("  unchanged  {c} field(s) {m} owns (not drift; -o json lists them)\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::{FieldDrift, managed::FieldKey};
    use crate::report::ResourceReport;
    use serde_json::json;

    fn upgrade(report: &ReleaseReport, reference: &[DesiredObject], new: &[DesiredObject], live: &[Value], force: bool) -> Document {
        preview(Inputs { report, reference, new, live, force, operation: "upgrade", now: jiff::Timestamp::now() })
    }

    fn object(api_version: &str, kind: &str, body: Value) -> DesiredObject {
        DesiredObject { api_version: api_version.into(), kind: kind.into(), name: "web".into(), namespace: None, template: None, index: 0, object: body }
    }

    fn drift(path: &[&str], live: Value, manager: &str) -> FieldDrift {
        FieldDrift {
            path: format!("/{}", path.join("/")),
            desired: None,
            live: Some(live),
            change: ChangeKind::Modified,
            manager: Some(manager.into()),
            operation: Some("Update".into()),
            subresource: None,
            time: None,
            candidates: vec![],
            seen: None,
            locator: path.iter().map(|p| FieldKey::Field(p.to_string())).collect(),
        }
    }

    fn checked(kind: &str, api_version: &str, state: ObjectState, fields: Vec<FieldDrift>, apply: ApplyMethod) -> ReleaseReport {
        let mut r = ReleaseReport::new("web", "shop", 1, crate::helm::ReleaseStatus::Deployed);
        r.apply_method = apply;
        r.resources = vec![ResourceReport {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: Some("shop".into()),
            name: "web".into(),
            state,
            fields,
            message: None,
            operations: vec![],
            seen: None,
            change_token: None,
            transient: false,
        }];
        r
    }

    #[test]
    fn each_drifted_field_meets_the_new_manifest() {
        let old = [object("apps/v1", "Deployment", json!({"spec": {"replicas": 1, "paused": false}}))];
        let new = [object("apps/v1", "Deployment", json!({"spec": {"replicas": 1}}))];
        let report = checked("Deployment", "apps/v1", ObjectState::Modified, vec![drift(&["spec", "replicas"], json!(3), "kubectl"), drift(&["spec", "paused"], json!(true), "kubectl-edit")], ApplyMethod::Csa);
        let d = upgrade(&report, &old, &new, &[], false);
        let got: Vec<(&str, &str, Option<&Value>)> = d.fields.iter().map(|r| (r.path.as_str(), r.outcome.as_str(), r.after.as_ref())).collect();
        assert_eq!(got, [("/spec/replicas", "reverted", Some(&json!(1))), ("/spec/paused", "removed", None)]);
        assert_eq!(d.summary, "this upgrade reverts 1 manual change (kubectl), and removes 1 drifted field (kubectl-edit)");
        // Server-side: the same drift is a conflict with its manager.
        let report = checked("Deployment", "apps/v1", ObjectState::Modified, vec![drift(&["spec", "replicas"], json!(3), "kubectl")], ApplyMethod::Ssa);
        let d = upgrade(&report, &old, &new, &[], false);
        assert_eq!((d.fields[0].outcome.as_str(), d.fields[0].manager.as_deref()), ("conflict", Some("kubectl")));
        assert!(d.tally.consequential());
    }

    #[test]
    fn custom_resources_merge_two_ways_and_missing_objects_come_back() {
        let widget = |color: &str| object("test.driftwatch.io/v1", "Widget", json!({"spec": {"color": color}}));
        let report = checked("Widget", "test.driftwatch.io/v1", ObjectState::Modified, vec![drift(&["spec", "color"], json!("red"), "kubectl-edit")], ApplyMethod::Csa);
        assert_eq!(upgrade(&report, &[widget("blue")], &[widget("blue")], &[], false).fields[0].outcome, "kept");
        assert_eq!(upgrade(&report, &[widget("blue")], &[widget("green")], &[], false).fields[0].outcome, "reverted");
        let missing = checked("Widget", "test.driftwatch.io/v1", ObjectState::Missing, vec![], ApplyMethod::Csa);
        let d = upgrade(&missing, &[widget("blue")], &[widget("blue")], &[], false);
        assert_eq!(d.fields[0].outcome, "recreated");
        assert!(upgrade(&missing, &[widget("blue")], &[], &[], false).fields.is_empty(), "an object the new manifest drops is not recreated");
    }

    #[test]
    fn fields_other_managers_own_meet_the_new_manifest_too() {
        // Not drifted: gitops applied the chart's own replicas (co-owned with Helm), and an
        // autoscaler owns the template's annotation the chart never sets.
        let live = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop", "managedFields": [
            {"manager": "helm", "operation": "Update", "fieldsV1": {"f:spec": {"f:replicas": {}, "f:paused": {}}}},
            {"manager": "gitops", "operation": "Apply", "time": "2026-11-30T10:00:00Z", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
            {"manager": "scaler", "operation": "Update", "fieldsV1": {"f:metadata": {"f:annotations": {"f:scaled": {}}}}},
            {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "fieldsV1": {"f:status": {"f:replicas": {}}}}
        ], "annotations": {"scaled": "yes"}}, "spec": {"replicas": 2, "paused": false}, "status": {"replicas": 2}});
        let old = [object("apps/v1", "Deployment", json!({"spec": {"replicas": 2, "paused": false}}))];
        let upgrade_to = |replicas: i64, apply: ApplyMethod, force: bool| {
            let new = [object("apps/v1", "Deployment", json!({"spec": {"replicas": replicas, "paused": false}}))];
            let report = checked("Deployment", "apps/v1", ObjectState::InSync, vec![], apply);
            upgrade(&report, &old, &new, std::slice::from_ref(&live), force)
        };
        let rows = |d: &Document| d.fields.iter().map(|r| (r.path.clone(), r.outcome.clone(), r.manager.clone().unwrap_or_default(), r.drift)).collect::<Vec<_>>();
        let s = |p: &str, o: &str, m: &str| (p.to_string(), o.to_string(), m.to_string(), false);
        // Server-side, the chart changes replicas: a conflict with gitops, though nothing drifted.
        let d = upgrade_to(3, ApplyMethod::Ssa, false);
        assert_eq!(rows(&d), [s("/spec/replicas", "conflict", "gitops"), s("/metadata/annotations/scaled", "unchanged", "scaler")]);
        assert_eq!(d.summary, "this upgrade will fail on 1 conflict (with gitops)");
        assert!(d.tally.consequential());
        assert_eq!(upgrade_to(3, ApplyMethod::Ssa, true).fields[0].outcome, "takenOver");
        // The same values: shared, nothing happens; client-side, Helm's patch sets the new value.
        assert_eq!(upgrade_to(2, ApplyMethod::Ssa, false).fields[0].outcome, "unchanged");
        assert!(!upgrade_to(2, ApplyMethod::Ssa, false).tally.consequential());
        let d = upgrade_to(3, ApplyMethod::Csa, false);
        assert_eq!((d.fields[0].outcome.as_str(), d.fields[0].after.clone()), ("changed", Some(json!(3))));
        assert_eq!(d.summary, "this upgrade overwrites 1 field another manager owns (gitops)");
        let text = render_text(&d);
        assert!(text.contains("changed    Deployment/web /spec/replicas: 2 -> 3 (owned by gitops, not drift)"), "{text}");
        assert!(text.contains("unchanged  1 field(s) scaler owns"), "{text}");
    }

    #[test]
    fn which_kinds_are_built_in() {
        for k in ["v1", "apps/v1", "batch/v1", "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1", "autoscaling/v2", "policy/v1"] {
            assert!(built_in(k), "{k}");
        }
        for k in ["test.driftwatch.io/v1", "gateway.networking.k8s.io/v1", "monitoring.coreos.com/v1", "cert-manager.io/v1"] {
            assert!(!built_in(k), "{k}");
        }
    }
}
