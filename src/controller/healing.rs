//! Heal execution (leader only): for each drifted object of a release under a `Heal` policy,
//! put back the manifest's values as Helm would — field manager `helm`; a server-side apply of
//! the manifest object (less ignored paths) for releases Helm 4 applied server-side; a guarded
//! JSON Patch of exactly the drifted paths for client-side releases — and recreate missing
//! objects with Helm's ownership stamps. Guardrails: `heal.after`, `heal.maxPerHour`, contested
//! paths, never while the release is pending, never a delete of an object.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::api::DriftPolicy;
use crate::check::DecodedRelease;
use crate::report::ReleaseReport;
use crate::cluster::Resolver;
use crate::drift::{self, ChangeKind, IgnoreRules, ObjectState};
use crate::helm::ApplyMethod;
use crate::heal::{plan_patch, with_helm_stamps, without_paths};

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
}

/// What one heal pass did, for Events and metrics.
#[derive(Debug, Default)]
pub struct HealPass {
    pub healed: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub newly_contested: Vec<(String, String)>,
}

fn object_key(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

pub async fn heal_release(
    resolver: &Resolver,
    decoded: &DecodedRelease,
    report: &ReleaseReport,
    policy: &DriftPolicy,
    ignore: &IgnoreRules,
    state: &mut HealState,
) -> HealPass {
    let mut pass = HealPass::default();
    let spec = &policy.spec.heal;
    let window = CONTEST_WINDOW.max(policy.spec.heal_after());
    let release_ns = decoded.release.namespace.as_str();
    let compare = crate::check::CheckSettings {
        ignore,
        ignore_managers: &policy.spec.ignore_managers,
        operations_as_drift: policy.spec.operations_as_drift,
        digest_key: None,
        confirm: false,
        concurrency: 1,
        reuse: None,
    };
    for res in &report.resources {
        if !res.state.is_drift() {
            continue;
        }
        let Some(desired) = decoded.split.objects.iter().find(|o| o.kind == res.kind && o.name == res.name && o.api_version == res.api_version) else {
            continue;
        };
        let key = object_key(&res.kind, &res.name);
        let Ok(kind) = resolver.resolve(&desired.api_version, &desired.kind).await else { continue };
        let ns = kind.namespace_of(desired.namespace.as_deref(), release_ns);
        let api: Api<DynamicObject> = match &ns {
            Some(n) => Api::namespaced_with(resolver.client().clone(), n, &kind.resource),
            None => Api::all_with(resolver.client().clone(), &kind.resource),
        };
        let mut stamped = with_helm_stamps(&desired.object, &decoded.release.name, release_ns);
        if let Some(n) = &ns {
            stamped["metadata"]["namespace"] = json!(n);
        }
        if res.state == ObjectState::Missing {
            if !spec.recreate_missing {
                continue;
            }
            let result = match decoded.release.apply_method {
                ApplyMethod::Ssa => api.patch(&desired.name, &PatchParams::apply(HELM_MANAGER).force(), &Patch::Apply(&stamped)).await.map(|_| ()),
                ApplyMethod::Csa => {
                    let obj: DynamicObject = serde_json::from_value(stamped.clone()).expect("a manifest object is an object");
                    api.create(&PostParams { field_manager: Some(HELM_MANAGER.into()), ..Default::default() }, &obj).await.map(|_| ())
                }
            };
            match result {
                Ok(()) => pass.healed.push(format!("{key} (recreated)")),
                Err(e) => pass.failed.push((key, e.to_string())),
            }
            continue;
        }
        // Compare afresh: the heal acts on the object as it is now.
        let live = match resolver.get_live(&kind, ns.as_deref(), &desired.name).await {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                pass.failed.push((key, e.to_string()));
                continue;
            }
        };
        // Compared afresh, the same way the check compares (ignore rules see the live labels).
        let (diff, ignored) = match crate::check::compare_live(resolver, desired, ns.as_deref(), &live, decoded.release.info.last_deployed, &compare).await {
            Ok(compared) => compared,
            Err(e) => {
                pass.failed.push((key, e.to_string()));
                continue;
            }
        };
        let fields = diff.fields;
        let now = Instant::now();
        let mut to_heal = Vec::new();
        for f in fields {
            if f.change == ChangeKind::Added && !spec.remove_added {
                continue;
            }
            let pkey = format!("{key} {}", f.path);
            if state.contested.contains_key(&pkey) {
                continue;
            }
            let recent = state.path_heals.entry(pkey.clone()).or_default();
            recent.retain(|t| now.duration_since(*t) < window);
            if recent.len() >= CONTEST_ROUNDS {
                let manager = f.manager.clone().unwrap_or_else(|| "an unknown manager".into());
                state.contested.insert(pkey.clone(), manager.clone());
                pass.newly_contested.push((pkey, manager));
                continue;
            }
            to_heal.push(f);
        }
        if to_heal.is_empty() {
            continue;
        }
        let prepared = drift::normalize::desired_for_compare(&desired.object);
        let restore_by_apply = decoded.release.apply_method == ApplyMethod::Ssa && to_heal.iter().any(|f| f.change != ChangeKind::Added);
        let result = if restore_by_apply {
            // Helm 4's own way: apply the manifest object as `helm`, less what is ignored or
            // contested (left to whoever owns it).
            let contested: Vec<String> = state.contested.keys().filter_map(|k| k.strip_prefix(&format!("{key} ")).map(str::to_string)).collect();
            let mut skip: Vec<&str> = ignored.clone();
            skip.extend(contested.iter().map(String::as_str));
            api.patch(&desired.name, &PatchParams::apply(HELM_MANAGER).force(), &Patch::Apply(without_paths(&stamped, &skip))).await.map(|_| ())
        } else {
            let (ops, _unplaced) = plan_patch(&prepared, &live, &to_heal, spec.remove_added);
            if ops.is_empty() {
                continue;
            }
            let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).expect("planned operations are a JSON Patch");
            api.patch(&desired.name, &PatchParams { field_manager: Some(HELM_MANAGER.into()), ..Default::default() }, &Patch::<()>::Json(patch))
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => {
                for f in &to_heal {
                    state.path_heals.entry(format!("{key} {}", f.path)).or_default().push(now);
                }
                pass.healed.push(key);
            }
            Err(e) => pass.failed.push((key, e.to_string())),
        }
    }
    pass
}

/// The suggestion a contested path comes with: the ignore rule that would settle it.
pub fn settle_hint(path_key: &str, manager: &str) -> String {
    let (obj, path) = path_key.split_once(' ').unwrap_or((path_key, ""));
    let (kind, name) = obj.split_once('/').unwrap_or((obj, ""));
    format!(
        "{manager} keeps changing {path} of {kind}/{name}; to stop healing it add to the policy: ignore: [{{paths: [\"{path}\"], target: {{kind: {kind}, name: {name}}}}}] (or ignoreManagers: [{manager}])"
    )
}
