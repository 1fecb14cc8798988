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
    /// `reverted`, `kept`, `removed`, `recreated`, `conflict`, `takenOver`, `adopted`.
    pub outcome: String,
    /// Who made the drift, and when (as the check found them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
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

/// The preview of an upgrade to `new` (the rendered objects) of a checked release.
/// `reference` is the deployed revision's objects (the check's desired state).
pub fn upgrade(report: &ReleaseReport, reference: &[DesiredObject], new: &[DesiredObject], force: bool) -> Document {
    let same = |o: &DesiredObject, api_version: &str, kind: &str, name: &str, ns: Option<&str>| {
        o.api_version == api_version && o.kind == kind && o.name == name && (o.namespace.is_none() || o.namespace.as_deref() == ns)
    };
    let mut rows = Vec::new();
    let mut tally = Tally::default();
    for r in report.resources.iter().filter(|r| r.state.is_drift()) {
        let new_obj = new.iter().find(|o| same(o, &r.api_version, &r.kind, &r.name, r.namespace.as_deref()));
        let old_obj = reference.iter().find(|o| same(o, &r.api_version, &r.kind, &r.name, r.namespace.as_deref()));
        let row = |path: String, outcome: &Outcome, manager: Option<String>, time: Option<String>, before: Option<Value>, after: Option<Value>| Row {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            path,
            outcome: outcome_name(outcome).to_string(),
            manager,
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
    }
    Document {
        name: report.name.clone(),
        namespace: report.namespace.clone(),
        operation: "upgrade".into(),
        revision: report.revision,
        apply_method: report.apply_method.to_string(),
        force_conflicts: force,
        summary: tally.sentence("upgrade"),
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
    for r in &d.fields {
        let who = r.manager.as_deref().map(|m| format!(" (changed by {m}{})", r.time.as_deref().map(|t| format!(", {t}")).unwrap_or_default())).unwrap_or_default();
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
        out.push_str(&format!("  {:10} {}/{} {}: {what}{who}\n", r.outcome, r.kind, r.name, r.path));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::{FieldDrift, managed::FieldKey};
    use crate::report::ResourceReport;
    use serde_json::json;

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
        let d = upgrade(&report, &old, &new, false);
        let got: Vec<(&str, &str, Option<&Value>)> = d.fields.iter().map(|r| (r.path.as_str(), r.outcome.as_str(), r.after.as_ref())).collect();
        assert_eq!(got, [("/spec/replicas", "reverted", Some(&json!(1))), ("/spec/paused", "removed", None)]);
        assert_eq!(d.summary, "this upgrade reverts 1 manual change, and removes 1 field");
        // Server-side: the same drift is a conflict with its manager.
        let report = checked("Deployment", "apps/v1", ObjectState::Modified, vec![drift(&["spec", "replicas"], json!(3), "kubectl")], ApplyMethod::Ssa);
        let d = upgrade(&report, &old, &new, false);
        assert_eq!((d.fields[0].outcome.as_str(), d.fields[0].manager.as_deref()), ("conflict", Some("kubectl")));
        assert!(d.tally.consequential());
    }

    #[test]
    fn custom_resources_merge_two_ways_and_missing_objects_come_back() {
        let widget = |color: &str| object("test.driftwatch.io/v1", "Widget", json!({"spec": {"color": color}}));
        let report = checked("Widget", "test.driftwatch.io/v1", ObjectState::Modified, vec![drift(&["spec", "color"], json!("red"), "kubectl-edit")], ApplyMethod::Csa);
        assert_eq!(upgrade(&report, &[widget("blue")], &[widget("blue")], false).fields[0].outcome, "kept");
        assert_eq!(upgrade(&report, &[widget("blue")], &[widget("green")], false).fields[0].outcome, "reverted");
        let missing = checked("Widget", "test.driftwatch.io/v1", ObjectState::Missing, vec![], ApplyMethod::Csa);
        let d = upgrade(&missing, &[widget("blue")], &[widget("blue")], false);
        assert_eq!(d.fields[0].outcome, "recreated");
        assert!(upgrade(&missing, &[widget("blue")], &[], false).fields.is_empty(), "an object the new manifest drops is not recreated");
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
