//! Healing, decided here and pure end to end: the guardrails (`guard`: never while Helm holds
//! the release's lock, not before `heal.after`, at most `heal.maxPerHour`), the planner
//! (`plan`: which actions put back what drifted, and which paths are contested) and the JSON
//! Patch it builds (each change guarded by a `test` of the live value, so a concurrent change
//! makes the heal fail instead of overwriting it). Nothing here deletes an object. The reads
//! and writes are `cluster::heal`'s; the controller carries data between them.

pub mod plan;

pub use plan::{Action, CONTEST_WINDOW, Found, HELM_MANAGER, HealFailure, HealState, Observed, Op, Outcome, Plan, Target, plan, record, retry_after, settle_hint};

use serde_json::{Value, json};

use crate::drift::compare::{escape_pointer, navigate};
use crate::drift::managed::FieldKey;
use crate::drift::{ChangeKind, FieldDrift};

/// The window `heal.maxPerHour` counts heals over.
pub const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

/// The guardrails' answer for one release: heal now, or wait (with the `Healed` condition to
/// show, and when to look again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Guard {
    Heal,
    Wait {
        /// `(status, reason, message)` of the `Healed` condition.
        condition: (String, String, String),
        /// When the wait ends on its own (a grace period or a rate limit); None: on a change.
        recheck_in: Option<std::time::Duration>,
    },
}

/// What the guardrails look at.
#[derive(Clone, Debug)]
pub struct GuardFacts<'a> {
    /// The newest revision and its status, when Helm holds its lock (`pending-*`).
    pub pending: Option<(u32, &'a str)>,
    /// How long the release has been drifted.
    pub age: std::time::Duration,
    /// `heal.after`, as written and as parsed.
    pub after: (&'a str, std::time::Duration),
    /// Ages of the heals of the last hour, oldest first.
    pub heals_last_hour: &'a [std::time::Duration],
    pub max_per_hour: u32,
    /// After a failed heal pass: the time left before the next may run, and the `Healed`
    /// condition the failure left (shown until then).
    pub backoff: Option<(std::time::Duration, (String, String, String))>,
}

/// The guardrails, in order: never while Helm holds the release's lock; not before `heal.after`
/// (look again when it ends); not before the backoff after a failed pass ends; at most
/// `heal.maxPerHour` (look again when the oldest heal is an hour old). Pure.
pub fn guard(f: &GuardFacts) -> Guard {
    let wait = |reason: &str, message: String, recheck_in| Guard::Wait { condition: ("False".into(), reason.into(), message), recheck_in };
    if let Some((revision, status)) = f.pending {
        return wait("ReleasePending", format!("revision {revision} is {status}: nothing is healed while Helm holds its lock"), None);
    }
    if f.age < f.after.1 {
        // Nothing else may change before the grace ends: look again then.
        let recheck = f.after.1 - f.age + std::time::Duration::from_millis(200);
        return wait("HealDelayed", format!("drift is {}s old; heal.after is {}", f.age.as_secs(), f.after.0), Some(recheck));
    }
    if let Some((left, condition)) = f.backoff.as_ref().filter(|(left, _)| !left.is_zero()) {
        return Guard::Wait { condition: condition.clone(), recheck_in: Some(*left) };
    }
    if f.heals_last_hour.len() >= f.max_per_hour as usize {
        let recheck = f.heals_last_hour.first().map(|oldest| RATE_WINDOW.saturating_sub(*oldest) + std::time::Duration::from_secs(1));
        return wait("RateLimited", format!("{} heals in the last hour (heal.maxPerHour {})", f.heals_last_hour.len(), f.max_per_hour), recheck);
    }
    Guard::Heal
}

/// Helm's ownership stamps, as `helm install` puts them on every object.
pub fn with_helm_stamps(object: &Value, release: &str, namespace: &str) -> Value {
    let mut o = object.clone();
    let meta = o.as_object_mut().and_then(|m| {
        m.entry("metadata").or_insert_with(|| json!({}));
        m.get_mut("metadata")?.as_object_mut()
    });
    if let Some(meta) = meta {
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        labels["app.kubernetes.io/managed-by"] = json!("Helm");
        let ann = meta.entry("annotations").or_insert_with(|| json!({}));
        ann["meta.helm.sh/release-name"] = json!(release);
        ann["meta.helm.sh/release-namespace"] = json!(namespace);
    }
    o
}

/// Removes the ignored pointers from a desired object (a server-side apply of the rest leaves
/// them to whoever owns them).
pub fn without_paths(object: &Value, pointers: &[&str]) -> Value {
    let mut o = object.clone();
    for p in pointers {
        if let Some((parent, last)) = p.rsplit_once('/') {
            let key = last.replace("~1", "/").replace("~0", "~");
            match o.pointer_mut(parent) {
                Some(Value::Object(m)) => {
                    m.remove(&key);
                }
                Some(Value::Array(a)) => {
                    if let Ok(i) = key.parse::<usize>() {
                        if i < a.len() {
                            a.remove(i);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    o
}

fn split_pointer(p: &str) -> Vec<String> {
    p.split('/').skip(1).map(|s| s.replace("~1", "/").replace("~0", "~")).collect()
}

fn join_pointer(segs: &[String]) -> String {
    segs.iter().map(|s| format!("/{}", escape_pointer(s))).collect()
}

/// The JSON Patch that puts back `fields` (Modified and Removed; Added only with
/// `remove_added`). `desired` is the prepared desired object (`normalize::desired_for_compare`),
/// whose pointers the fields' paths are. Fields it cannot place are returned apart.
pub fn plan_patch(desired: &Value, live: &Value, fields: &[FieldDrift], remove_added: bool) -> (Vec<Value>, Vec<String>) {
    let mut ops = Vec::new();
    let mut removals = Vec::new();
    let mut unplaced = Vec::new();
    for f in fields {
        match f.change {
            ChangeKind::Modified => {
                let (Some((lv, lp)), Some(dv)) = (navigate(live, &f.locator), desired.pointer(&f.path)) else {
                    unplaced.push(f.path.clone());
                    continue;
                };
                ops.push(json!({"op": "test", "path": lp, "value": lv}));
                ops.push(json!({"op": "replace", "path": lp, "value": dv}));
            }
            ChangeKind::Removed => {
                // The deepest ancestor that exists live; add the desired subtree under it.
                let segs = split_pointer(&f.path);
                let Some(depth) = (0..f.locator.len()).rev().find(|&k| k == 0 || navigate(live, &f.locator[..k]).is_some()) else {
                    unplaced.push(f.path.clone());
                    continue;
                };
                let parent_ptr = if depth == 0 { String::new() } else { navigate(live, &f.locator[..depth]).map(|(_, p)| p).unwrap_or_default() };
                let Some(value) = desired.pointer(&join_pointer(&segs[..=depth.min(segs.len() - 1)])) else {
                    unplaced.push(f.path.clone());
                    continue;
                };
                let target = match &f.locator[depth] {
                    FieldKey::Field(name) => format!("{parent_ptr}/{}", escape_pointer(name)),
                    FieldKey::Key(_) | FieldKey::Value(_) => format!("{parent_ptr}/-"),
                    FieldKey::Index(i) => format!("{parent_ptr}/{i}"),
                };
                ops.push(json!({"op": "add", "path": target, "value": value}));
            }
            ChangeKind::Added if remove_added => match navigate(live, &f.locator) {
                Some((lv, lp)) => removals.push((lp, lv.clone())),
                None => unplaced.push(f.path.clone()),
            },
            ChangeKind::Added => {}
        }
    }
    // Remove list items from the highest index down, so earlier removals do not shift later ones.
    removals.sort_by(|a, b| b.0.cmp(&a.0));
    for (p, v) in removals {
        ops.push(json!({"op": "test", "path": p, "value": v}));
        ops.push(json!({"op": "remove", "path": p}));
    }
    (ops, unplaced)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    fn facts<'a>(age: u64, after: u64, heals: &'a [Duration], max: u32) -> super::GuardFacts<'a> {
        super::GuardFacts { pending: None, age: Duration::from_secs(age), after: ("x", Duration::from_secs(after)), heals_last_hour: heals, max_per_hour: max, backoff: None }
    }

    #[test]
    fn guardrails_decide_in_order() {
        use super::{Guard, guard};
        assert_eq!(guard(&facts(10, 0, &[], 10)), Guard::Heal);
        let pending = super::GuardFacts { pending: Some((4, "pending-upgrade")), ..facts(10, 0, &[], 10) };
        match guard(&pending) {
            Guard::Wait { condition, recheck_in } => {
                assert_eq!((condition.1.as_str(), recheck_in), ("ReleasePending", None));
                assert!(condition.2.contains("revision 4 is pending-upgrade"));
            }
            other => panic!("{other:?}"),
        }
        match guard(&facts(10, 30, &[], 10)) {
            Guard::Wait { condition, recheck_in } => {
                assert_eq!(condition.1, "HealDelayed");
                assert_eq!(recheck_in, Some(Duration::from_millis(20_200)), "when the grace ends");
            }
            other => panic!("{other:?}"),
        }
        let heals = [Duration::from_secs(3000), Duration::from_secs(100)];
        match guard(&facts(10, 0, &heals, 2)) {
            Guard::Wait { condition, recheck_in } => {
                assert_eq!(condition.1, "RateLimited");
                assert_eq!(recheck_in, Some(Duration::from_secs(601)), "when the oldest heal is an hour old");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(guard(&facts(10, 0, &heals, 3)), Guard::Heal);
        // After a failed pass: the failure's condition, until its backoff ends (before the
        // rate limit: a failure is what used the heals up).
        let failed = ("False".to_string(), "Forbidden".to_string(), "cannot patch".to_string());
        let backing_off = super::GuardFacts { backoff: Some((Duration::from_secs(25), failed.clone())), ..facts(10, 0, &heals, 2) };
        assert_eq!(guard(&backing_off), Guard::Wait { condition: failed.clone(), recheck_in: Some(Duration::from_secs(25)) });
        let over = super::GuardFacts { backoff: Some((Duration::ZERO, failed)), ..facts(10, 0, &heals, 3) };
        assert_eq!(guard(&over), Guard::Heal);
        // Pending wins over everything else.
        let all = super::GuardFacts { pending: Some((1, "pending-install")), ..facts(0, 30, &heals, 1) };
        assert!(matches!(guard(&all), Guard::Wait { condition, .. } if condition.1 == "ReleasePending"));
    }

    use super::*;
    use crate::drift::{BuiltinSchema, DiffOptions, diff_object, normalize::desired_for_compare};

    fn plan(desired: Value, live: Value, remove_added: bool) -> Value {
        let fields = diff_object(&desired, &live, &BuiltinSchema, DiffOptions::default()).fields;
        let (ops, unplaced) = plan_patch(&desired_for_compare(&desired), &live, &fields, remove_added);
        assert!(unplaced.is_empty(), "{unplaced:?}");
        let mut healed = live.clone();
        json_patch::patch(&mut healed, &serde_json::from_value::<json_patch::Patch>(Value::Array(ops)).unwrap()).unwrap();
        let after = diff_object(&desired, &healed, &BuiltinSchema, DiffOptions::default()).fields;
        assert!(after.iter().all(|f| f.change == ChangeKind::Added && !remove_added), "still drifted: {after:?}");
        healed
    }

    #[test]
    fn modified_fields_are_replaced_in_place() {
        let d = json!({"kind": "Deployment", "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}]}}}});
        let l = json!({"kind": "Deployment", "spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "b", "image": "y:2"}, {"name": "a", "image": "x:1"}]}}}});
        let healed = plan(d, l, false);
        assert_eq!(healed["spec"]["replicas"], 2);
        assert_eq!(healed["spec"]["template"]["spec"]["containers"][0]["image"], "y:1", "matched by name, not index");
    }

    #[test]
    fn removed_fields_and_items_are_added_back() {
        let d = json!({"kind": "ConfigMap", "data": {"a": "1", "b": "2"}, "spec": {"env": [{"name": "A", "value": "1"}], "probe": {"path": "/h"}}});
        let l = json!({"kind": "ConfigMap", "data": {"a": "1"}, "spec": {"env": []}});
        let healed = plan(d, l, false);
        assert_eq!(healed["data"]["b"], "2");
        assert_eq!(healed["spec"]["probe"]["path"], "/h");
    }

    #[test]
    fn secrets_heal_to_the_manifests_bytes() {
        let d = json!({"apiVersion": "v1", "kind": "Secret", "stringData": {"p": "hunter2"}});
        let l = json!({"apiVersion": "v1", "kind": "Secret", "data": {"p": "b3RoZXI="}});
        let healed = plan(d, l, false);
        assert_eq!(healed["data"]["p"], "aHVudGVyMg==");
    }

    #[test]
    fn added_items_only_with_remove_added() {
        let d = json!({"kind": "X", "spec": {"env": [{"name": "A", "value": "1"}]}});
        let l = json!({"kind": "X", "metadata": {"managedFields": [{"manager": "kubectl-patch", "operation": "Update",
            "fieldsV1": {"f:spec": {"f:env": {"k:{\"name\":\"B\"}": {".": {}, "f:name": {}}, "k:{\"name\":\"C\"}": {".": {}, "f:name": {}}}}}}]},
            "spec": {"env": [{"name": "B"}, {"name": "A", "value": "1"}, {"name": "C"}]}});
        let fields = diff_object(&d, &l, &BuiltinSchema, DiffOptions::default()).fields;
        let (ops, _) = plan_patch(&desired_for_compare(&d), &l, &fields, false);
        assert!(ops.is_empty());
        let (ops, _) = plan_patch(&desired_for_compare(&d), &l, &fields, true);
        let mut healed = l.clone();
        json_patch::patch(&mut healed, &serde_json::from_value::<json_patch::Patch>(Value::Array(ops)).unwrap()).unwrap();
        assert_eq!(healed["spec"]["env"], json!([{"name": "A", "value": "1"}]));
    }

    #[test]
    fn a_concurrent_change_fails_the_patch() {
        let d = json!({"kind": "X", "spec": {"n": 1}});
        let l = json!({"kind": "X", "spec": {"n": 2}});
        let fields = diff_object(&d, &l, &BuiltinSchema, DiffOptions::default()).fields;
        let (ops, _) = plan_patch(&desired_for_compare(&d), &l, &fields, false);
        let mut changed = json!({"kind": "X", "spec": {"n": 3}});
        assert!(json_patch::patch(&mut changed, &serde_json::from_value::<json_patch::Patch>(Value::Array(ops)).unwrap()).is_err());
    }

    #[test]
    fn stamps_and_ignored_paths() {
        let o = with_helm_stamps(&json!({"kind": "ConfigMap", "metadata": {"name": "a"}}), "r", "ns");
        assert_eq!(o["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm");
        assert_eq!(o["metadata"]["annotations"]["meta.helm.sh/release-name"], "r");
        let w = without_paths(&json!({"spec": {"replicas": 2, "x": 1}}), &["/spec/replicas"]);
        assert_eq!(w, json!({"spec": {"x": 1}}));
    }
}
