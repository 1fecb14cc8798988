//! The heal planner and its memory, pure: from what a heal pass read afresh of each drifted
//! object (through the check's own comparison, in `cluster::heal`), the actions that put the
//! manifest's values back as Helm would — a create or a server-side apply of the stamped
//! manifest object for a missing object, an apply of the manifest object (less ignored and
//! contested paths) for a release Helm 4 applied server-side, a guarded JSON Patch of exactly
//! the drifted paths for a client-side one — and, once they ran, what the report and Events
//! say. Paths healed again and again within the contest window are left alone (contested).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use kube::core::ApiResource;
use kube::runtime::events::{Event, EventType};
use serde_json::{Value, json};

use crate::api::HealSpec;
use crate::drift::{ChangeKind, FieldDrift};
use crate::helm::ApplyMethod;

/// The field manager heals write as: Helm's own, so the next `helm upgrade` owns them again.
pub const HELM_MANAGER: &str = "helm";
/// Heals of one path within this window (or `heal.after`, if longer) that keep being undone
/// make the path contested.
pub const CONTEST_WINDOW: Duration = Duration::from_secs(300);
pub const CONTEST_ROUNDS: usize = 3;

/// What the controller remembers of one release's heals.
#[derive(Debug, Default)]
pub struct HealState {
    pub total: u32,
    pub times: VecDeque<Instant>,
    /// "Kind/name path" → when it was healed.
    pub path_heals: HashMap<String, Vec<Instant>>,
    /// "Kind/name path" → the manager that keeps changing it.
    pub contested: HashMap<String, String>,
    pub last: Option<Value>,
    pub condition: Option<(String, String, String)>,
    /// Heal passes that failed in a row, and when the next may run (a failure is not retried
    /// at once: an error that stays, such as a missing permission, would use up maxPerHour).
    pub failures: u32,
    pub retry_at: Option<Instant>,
}

/// Why one heal action failed: the API server's message, and whether it was a 403 (the
/// controller's ServiceAccount may not write the object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealFailure {
    pub forbidden: bool,
    pub message: String,
}

impl HealFailure {
    pub fn of(e: &kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => HealFailure { forbidden: s.code == 403, message: s.message.clone() },
            other => HealFailure { forbidden: false, message: other.to_string() },
        }
    }
}

/// How long after the n-th failed heal pass in a row the next may run: 30 s, doubling, at most
/// 30 minutes.
pub fn retry_after(failures: u32) -> Duration {
    Duration::from_secs(30).saturating_mul(1u32 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(1800))
}

/// Where an action goes.
#[derive(Clone, Debug)]
pub struct Target {
    pub resource: ApiResource,
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Create the object (client-side releases: Helm 3 creates).
    Create(Value),
    /// Server-side apply as `helm`, forced.
    Apply(Value),
    /// A JSON Patch whose every change is guarded by a `test` of the live value.
    JsonPatch(Vec<Value>),
}

/// One write of a heal.
#[derive(Clone, Debug)]
pub struct Action {
    /// `Kind/name`.
    pub object: String,
    pub target: Target,
    pub op: Op,
    /// The drifted paths it puts back (empty for a recreate).
    pub paths: Vec<String>,
}

/// What a heal pass found of one drifted object, read afresh.
#[derive(Clone, Debug)]
pub enum Found {
    /// Missing when checked: recreated if the policy says so.
    Missing,
    /// There when checked, gone now: nothing to do.
    Gone,
    /// Compared afresh: the fields that differ and the ignored pointers.
    Live { live: Value, fields: Vec<FieldDrift>, ignored: Vec<String> },
    /// Could not be read or compared.
    Failed(String),
}

/// One drifted object as a heal pass sees it.
#[derive(Clone, Debug)]
pub struct Observed {
    /// `Kind/name`.
    pub object: String,
    pub target: Target,
    /// The manifest object with Helm's ownership stamps (and its namespace).
    pub stamped: Value,
    /// The manifest object as the comparison prepared it (the fields' paths point into it).
    pub prepared: Value,
    pub found: Found,
}

/// What to do, and what already went wrong before anything was sent.
#[derive(Debug, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub failed: Vec<(String, String)>,
    /// (`Kind/name path`, manager) that became contested in this pass.
    pub newly_contested: Vec<(String, String)>,
}

/// The actions that heal `observed`. Marks paths contested in `state` (a path healed
/// [`CONTEST_ROUNDS`] times within the window); sends nothing.
pub fn plan(observed: Vec<Observed>, spec: &HealSpec, method: ApplyMethod, state: &mut HealState, window: Duration, now: Instant) -> Plan {
    let mut out = Plan::default();
    for o in observed {
        let (live, fields, ignored) = match o.found {
            Found::Missing if spec.recreate_missing => {
                let op = match method {
                    ApplyMethod::Ssa => Op::Apply(o.stamped),
                    ApplyMethod::Csa => Op::Create(o.stamped),
                };
                out.actions.push(Action { object: o.object, target: o.target, op, paths: Vec::new() });
                continue;
            }
            Found::Missing | Found::Gone => continue,
            Found::Failed(e) => {
                out.failed.push((o.object, e));
                continue;
            }
            Found::Live { live, fields, ignored } => (live, fields, ignored),
        };
        let mut to_heal = Vec::new();
        for f in fields {
            if f.change == ChangeKind::Added && !spec.remove_added {
                continue;
            }
            let pkey = format!("{} {}", o.object, f.path);
            if state.contested.contains_key(&pkey) {
                continue;
            }
            let recent = state.path_heals.entry(pkey.clone()).or_default();
            recent.retain(|t| now.duration_since(*t) < window);
            if recent.len() >= CONTEST_ROUNDS {
                let manager = f.manager.clone().unwrap_or_else(|| "an unknown manager".into());
                state.contested.insert(pkey.clone(), manager.clone());
                out.newly_contested.push((pkey, manager));
                continue;
            }
            to_heal.push(f);
        }
        if to_heal.is_empty() {
            continue;
        }
        let paths: Vec<String> = to_heal.iter().map(|f| f.path.clone()).collect();
        let op = if method == ApplyMethod::Ssa && to_heal.iter().any(|f| f.change != ChangeKind::Added) {
            // Helm 4's own way: apply the manifest object as `helm`, less what is ignored or
            // contested (left to whoever owns it).
            let prefix = format!("{} ", o.object);
            let mut skip: Vec<&str> = ignored.iter().map(String::as_str).collect();
            skip.extend(state.contested.keys().filter_map(|k| k.strip_prefix(&prefix)));
            Op::Apply(super::without_paths(&o.stamped, &skip))
        } else {
            let (ops, _unplaced) = super::plan_patch(&o.prepared, &live, &to_heal, spec.remove_added);
            if ops.is_empty() {
                continue;
            }
            Op::JsonPatch(ops)
        };
        out.actions.push(Action { object: o.object, target: o.target, op, paths });
    }
    out
}

/// What a heal pass did, once its actions ran.
#[derive(Default)]
pub struct Outcome {
    pub healed: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub newly_contested: Vec<(String, String)>,
    /// `Succeeded`, `Partial` or `Failed`; None when nothing was tried.
    pub result: Option<&'static str>,
    pub events: Vec<Event>,
}

/// Records what the actions did (`results`: each action with its error, if any; none when this
/// replica does not lead) into `state`, and says what to report. A failed pass sets when the
/// next may run ([`retry_after`]); a forbidden write says which permission is missing.
pub fn record(state: &mut HealState, plan: Plan, results: Vec<(Action, Result<(), HealFailure>)>, at: Instant, now: jiff::Timestamp) -> Outcome {
    let mut out = Outcome { failed: plan.failed, newly_contested: plan.newly_contested, ..Default::default() };
    let forbidden = results.iter().any(|(_, r)| r.as_ref().is_err_and(|e| e.forbidden));
    for (action, result) in results {
        match result {
            Ok(()) => {
                for p in &action.paths {
                    state.path_heals.entry(format!("{} {p}", action.object)).or_default().push(at);
                }
                out.healed.push(if action.paths.is_empty() { format!("{} (recreated)", action.object) } else { action.object });
            }
            Err(e) => out.failed.push((action.object, e.message)),
        }
    }
    let warn = |reason: &str, note: String| Event { type_: EventType::Warning, reason: reason.into(), note: Some(note), action: "Heal".into(), secondary: None };
    for (path, manager) in &out.newly_contested {
        out.events.push(warn("HealContested", settle_hint(path, manager)));
    }
    if !out.healed.is_empty() || !out.failed.is_empty() {
        state.total += 1;
        state.times.push_back(at);
        let result = if out.failed.is_empty() {
            "Succeeded"
        } else if out.healed.is_empty() {
            "Failed"
        } else {
            "Partial"
        };
        out.result = Some(result);
        state.last = Some(json!({"time": now.to_string(), "result": result, "resources": out.healed}));
        if !out.healed.is_empty() {
            let note = format!("put back {}", out.healed.join(", "));
            out.events.push(Event { type_: EventType::Normal, reason: "DriftHealed".into(), note: Some(note.clone()), action: "Heal".into(), secondary: None });
            state.condition = Some(("True".into(), "HealSucceeded".into(), note));
        }
        if out.failed.is_empty() {
            state.failures = 0;
            state.retry_at = None;
        } else {
            state.failures += 1;
            let wait = retry_after(state.failures);
            state.retry_at = Some(at + wait);
            let note = out.failed.iter().map(|(k, e)| format!("{k}: {e}")).collect::<Vec<_>>().join("; ");
            out.events.push(warn("HealFailed", note.clone()));
            let (reason, message) = if forbidden {
                ("Forbidden", format!("{note}. Driftwatch's ServiceAccount may not write it: grant write access (the chart's heal.enabled=true) or set the policy to mode: Detect. Next try in {}s", wait.as_secs()))
            } else {
                ("HealFailed", format!("{note}. Next try in {}s", wait.as_secs()))
            };
            state.condition = Some(("False".into(), reason.into(), message));
        }
    }
    state.show_contested();
    out
}

impl HealState {
    /// What a replica that never healed this release takes over from the report another replica
    /// wrote (after a restart or a leadership change): the heal count, the last heal, the
    /// `Healed` condition, and the last heal as one of the hour's heals when it falls inside
    /// it (so `maxPerHour` is not reset by a failover). `status` is the report's status.
    pub fn resume(status: &Value, now: jiff::Timestamp, at: Instant) -> HealState {
        let last = status.get("lastHeal").filter(|v| !v.is_null()).cloned();
        let condition = status.get("conditions").and_then(Value::as_array).and_then(|cs| cs.iter().find(|c| c["type"] == "Healed")).map(|c| {
            let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            (text("status"), text("reason"), text("message"))
        });
        let mut times = VecDeque::new();
        let since = last.as_ref().and_then(|l| l.get("time")?.as_str()?.parse::<jiff::Timestamp>().ok()).map(|t| now.as_millisecond() - t.as_millisecond());
        if let Some(ms) = since.filter(|ms| (0..super::RATE_WINDOW.as_millis() as i64).contains(ms)) {
            if let Some(t) = at.checked_sub(Duration::from_millis(ms as u64)) {
                times.push_back(t);
            }
        }
        HealState { total: status.get("heals").and_then(Value::as_u64).unwrap_or(0) as u32, times, last, condition, ..HealState::default() }
    }

    /// A contested path outranks every other `Healed` condition: it needs a person.
    pub fn show_contested(&mut self) {
        if let Some((path, manager)) = self.contested.iter().next() {
            self.condition = Some(("False".into(), "HealContested".into(), settle_hint(path, manager)));
        }
    }
}

/// The suggestion a contested path comes with: the ignore rule that would settle it.
pub fn settle_hint(path_key: &str, manager: &str) -> String {
    let (obj, path) = path_key.split_once(' ').unwrap_or((path_key, ""));
    let (kind, name) = obj.split_once('/').unwrap_or((obj, ""));
    format!(
        "{manager} keeps changing {path} of {kind}/{name}; to stop healing it add to the policy: ignore: [{{paths: [\"{path}\"], target: {{kind: {kind}, name: {name}}}}}] (or ignoreManagers: [{manager}])"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::managed::FieldKey;

    #[test]
    fn a_new_replica_resumes_the_heal_history_the_report_shows() {
        let now: jiff::Timestamp = "2026-12-02T02:00:00Z".parse().unwrap();
        let at = Instant::now();
        let status = json!({
            "heals": 3,
            "lastHeal": {"time": "2026-12-02T01:50:00Z", "result": "Succeeded", "resources": ["Deployment/app"]},
            "conditions": [
                {"type": "Drifted", "status": "False", "reason": "InSync", "message": "m"},
                {"type": "Healed", "status": "True", "reason": "HealSucceeded", "message": "put back Deployment/app"}
            ]
        });
        let st = HealState::resume(&status, now, at);
        assert_eq!(st.total, 3);
        assert_eq!(st.condition, Some(("True".into(), "HealSucceeded".into(), "put back Deployment/app".into())));
        assert_eq!(st.last.as_ref().unwrap()["result"], "Succeeded");
        assert_eq!(st.times.len(), 1, "the last heal counts towards maxPerHour");
        assert!((at - st.times[0]).as_secs() == 600);
        // A heal more than an hour ago does not count; a report without heals resumes nothing.
        let old = json!({"heals": 1, "lastHeal": {"time": "2026-12-02T00:30:00Z"}});
        assert!(HealState::resume(&old, now, at).times.is_empty());
        let none = HealState::resume(&json!({"conditions": []}), now, at);
        assert_eq!((none.total, none.last, none.condition), (0, None, None));
    }

    fn target() -> Target {
        Target { resource: ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()), namespace: Some("shop".into()), name: "cfg".into() }
    }

    fn field(path: &str, change: ChangeKind, manager: Option<&str>) -> FieldDrift {
        let key = path.trim_start_matches('/').split('/').map(|s| FieldKey::Field(s.to_string())).collect();
        FieldDrift {
            path: path.into(),
            desired: None,
            live: None,
            change,
            manager: manager.map(str::to_string),
            operation: None,
            subresource: None,
            time: None,
            candidates: Vec::new(),
            seen: None,
            locator: key,
        }
    }

    fn desired() -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1", "b": "2"}})
    }

    fn observed(found: Found) -> Observed {
        Observed { object: "ConfigMap/cfg".into(), target: target(), stamped: desired(), prepared: desired(), found }
    }

    fn drifted() -> Found {
        let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "9", "b": "2", "extra": "x"}});
        Found::Live {
            live,
            fields: vec![field("/data/a", ChangeKind::Modified, Some("kubectl-edit")), field("/data/extra", ChangeKind::Added, Some("kubectl-edit"))],
            ignored: vec!["/data/b".into()],
        }
    }

    #[test]
    fn client_side_releases_get_a_guarded_patch_of_the_drifted_paths_only() {
        let mut st = HealState::default();
        let p = plan(vec![observed(drifted())], &HealSpec::default(), ApplyMethod::Csa, &mut st, CONTEST_WINDOW, Instant::now());
        assert_eq!(p.actions.len(), 1);
        assert_eq!(p.actions[0].paths, vec!["/data/a"], "added fields stay unless removeAdded");
        assert_eq!(
            p.actions[0].op,
            Op::JsonPatch(vec![json!({"op": "test", "path": "/data/a", "value": "9"}), json!({"op": "replace", "path": "/data/a", "value": "1"})])
        );
        let spec = HealSpec { remove_added: true, ..Default::default() };
        let p = plan(vec![observed(drifted())], &spec, ApplyMethod::Csa, &mut HealState::default(), CONTEST_WINDOW, Instant::now());
        assert_eq!(p.actions[0].paths, vec!["/data/a", "/data/extra"]);
    }

    #[test]
    fn server_side_releases_apply_the_manifest_less_ignored_paths() {
        let mut st = HealState::default();
        let p = plan(vec![observed(drifted())], &HealSpec::default(), ApplyMethod::Ssa, &mut st, CONTEST_WINDOW, Instant::now());
        match &p.actions[0].op {
            Op::Apply(v) => assert_eq!(v["data"], json!({"a": "1"}), "the ignored /data/b is left to whoever owns it"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_objects_are_recreated_only_when_asked_and_gone_ones_left() {
        let mut st = HealState::default();
        let spec = HealSpec { recreate_missing: true, ..Default::default() };
        let p = plan(vec![observed(Found::Missing), observed(Found::Gone)], &spec, ApplyMethod::Csa, &mut st, CONTEST_WINDOW, Instant::now());
        assert_eq!(p.actions.len(), 1);
        assert!(matches!(p.actions[0].op, Op::Create(_)));
        let p = plan(vec![observed(Found::Missing)], &spec, ApplyMethod::Ssa, &mut st, CONTEST_WINDOW, Instant::now());
        assert!(matches!(p.actions[0].op, Op::Apply(_)));
        let off = HealSpec { recreate_missing: false, ..Default::default() };
        assert!(plan(vec![observed(Found::Missing)], &off, ApplyMethod::Csa, &mut st, CONTEST_WINDOW, Instant::now()).actions.is_empty());
        let p = plan(vec![observed(Found::Failed("forbidden".into()))], &spec, ApplyMethod::Csa, &mut st, CONTEST_WINDOW, Instant::now());
        assert_eq!(p.failed, vec![("ConfigMap/cfg".to_string(), "forbidden".to_string())]);
    }

    #[test]
    fn a_path_healed_three_times_in_the_window_becomes_contested() {
        let mut st = HealState::default();
        let t0 = Instant::now();
        for round in 0..CONTEST_ROUNDS {
            let at = t0 + Duration::from_secs(10 * round as u64);
            let p = plan(vec![observed(drifted())], &HealSpec::default(), ApplyMethod::Csa, &mut st, CONTEST_WINDOW, at);
            let results = p.actions.iter().cloned().map(|a| (a, Ok(()))).collect();
            let out = record(&mut st, p, results, at, jiff::Timestamp::UNIX_EPOCH);
            assert_eq!(out.result, Some("Succeeded"));
            assert_eq!(out.healed, vec!["ConfigMap/cfg"]);
        }
        let at = t0 + Duration::from_secs(40);
        let p = plan(vec![observed(drifted())], &HealSpec::default(), ApplyMethod::Csa, &mut st, CONTEST_WINDOW, at);
        assert!(p.actions.is_empty());
        assert_eq!(p.newly_contested, vec![("ConfigMap/cfg /data/a".to_string(), "kubectl-edit".to_string())]);
        let out = record(&mut st, p, vec![], at, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(out.result, None, "nothing tried: no heal counted");
        assert_eq!(out.events.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(), vec!["HealContested"]);
        assert_eq!(st.total, 3);
        let (status, reason, message) = st.condition.clone().unwrap();
        assert_eq!((status.as_str(), reason.as_str()), ("False", "HealContested"));
        assert!(message.contains("ignoreManagers: [kubectl-edit]"), "{message}");
        // Heals spread wider than the window are not a contest.
        let mut spread = HealState::default();
        for round in 0..5 {
            let at = t0 + CONTEST_WINDOW * round;
            let p = plan(vec![observed(drifted())], &HealSpec::default(), ApplyMethod::Csa, &mut spread, CONTEST_WINDOW, at);
            assert_eq!(p.actions.len(), 1, "round {round}");
            let results = p.actions.iter().cloned().map(|a| (a, Ok(()))).collect();
            record(&mut spread, p, results, at, jiff::Timestamp::UNIX_EPOCH);
        }
    }

    #[test]
    fn failed_passes_back_off() {
        let waits: Vec<u64> = (1..=9).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 960, 1800, 1800, 1800]);
    }

    #[test]
    fn failures_and_partial_passes_are_reported() {
        let mut st = HealState::default();
        let spec = HealSpec { recreate_missing: true, ..Default::default() };
        let p = plan(vec![observed(drifted()), observed(Found::Missing)], &spec, ApplyMethod::Csa, &mut st, CONTEST_WINDOW, Instant::now());
        let mut results: Vec<(Action, Result<(), HealFailure>)> = p.actions.iter().cloned().map(|a| (a, Ok(()))).collect();
        results[1].1 = Err(HealFailure { forbidden: false, message: "conflict".into() });
        let out = record(&mut st, p, results, Instant::now(), jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(out.result, Some("Partial"));
        assert_eq!(out.failed, vec![("ConfigMap/cfg".to_string(), "conflict".to_string())]);
        assert_eq!(out.events.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(), vec!["DriftHealed", "HealFailed"]);
        assert_eq!(st.condition.as_ref().unwrap().1, "HealFailed");
        assert!(st.condition.as_ref().unwrap().2.ends_with("Next try in 30s"), "{:?}", st.condition);
        assert_eq!(st.last.as_ref().unwrap()["result"], "Partial");
        // A forbidden write names the permission; each failure in a row waits longer.
        let p = plan(vec![observed(drifted())], &spec, ApplyMethod::Csa, &mut st, CONTEST_WINDOW, Instant::now());
        let denied = HealFailure { forbidden: true, message: "deployments.apps \"web\" is forbidden: User \"sa\" cannot patch".into() };
        let results = p.actions.iter().cloned().map(|a| (a, Err(denied.clone()))).collect();
        let at = Instant::now();
        let out = record(&mut st, p, results, at, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(out.result, Some("Failed"));
        let (status, reason, message) = st.condition.clone().unwrap();
        assert_eq!((status.as_str(), reason.as_str()), ("False", "Forbidden"));
        assert!(message.contains("cannot patch") && message.contains("heal.enabled=true") && message.ends_with("Next try in 60s"), "{message}");
        assert_eq!((st.failures, st.retry_at), (2, Some(at + Duration::from_secs(60))));
        // A pass that succeeds ends the backoff.
        let p = plan(vec![observed(drifted())], &spec, ApplyMethod::Csa, &mut st, CONTEST_WINDOW, at);
        let results = p.actions.iter().cloned().map(|a| (a, Ok(()))).collect();
        record(&mut st, p, results, at, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!((st.failures, st.retry_at), (0, None));
        // Not leading: nothing ran, nothing is counted.
        let mut idle = HealState::default();
        let p = plan(vec![observed(drifted())], &spec, ApplyMethod::Csa, &mut idle, CONTEST_WINDOW, Instant::now());
        let out = record(&mut idle, p, vec![], Instant::now(), jiff::Timestamp::UNIX_EPOCH);
        assert_eq!((out.result, idle.total), (None, 0));
    }
}
