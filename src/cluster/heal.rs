//! A heal's reads and writes. `observe` reads each drifted object of a release afresh and
//! compares it through the check's own comparison (`check::compare_live`: one comparison path
//! in the whole program); `execute` sends one planned action as field manager `helm`. What to
//! heal is decided by `heal::plan`, between the two.

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::Resolver;
use crate::check::{CheckSettings, DecodedRelease};
use crate::drift::ObjectState;
use crate::heal::{Action, Found, HELM_MANAGER, Observed, Op, Target, with_helm_stamps};
use crate::report::ReleaseReport;

/// The drifted objects of `report`, each read and compared afresh: the heal acts on the objects
/// as they are now, with the ignore rules seeing their live labels as the check's did.
pub async fn observe(resolver: &Resolver, decoded: &DecodedRelease, report: &ReleaseReport, compare: &CheckSettings<'_>) -> Vec<Observed> {
    let release_ns = decoded.release.namespace.as_str();
    let mut out = Vec::new();
    for res in report.resources.iter().filter(|r| r.state.is_drift()) {
        let Some(desired) = decoded.split.objects.iter().find(|o| o.kind == res.kind && o.name == res.name && o.api_version == res.api_version) else {
            continue;
        };
        let Ok(kind) = resolver.resolve(&desired.api_version, &desired.kind).await else { continue };
        let ns = kind.namespace_of(desired.namespace.as_deref(), release_ns);
        let mut stamped = with_helm_stamps(&desired.object, &decoded.release.name, release_ns);
        if let Some(n) = &ns {
            stamped["metadata"]["namespace"] = json!(n);
        }
        let found = if res.state == ObjectState::Missing {
            Found::Missing
        } else {
            match resolver.get_live(&kind, ns.as_deref(), &desired.name).await {
                Ok(None) => Found::Gone,
                Err(e) => Found::Failed(e.to_string()),
                Ok(Some(live)) => match crate::check::compare_live(resolver, desired, ns.as_deref(), &live, decoded.release.info.last_deployed, compare).await {
                    Ok((diff, ignored)) => Found::Live { live, fields: diff.fields, ignored: ignored.into_iter().map(str::to_string).collect() },
                    Err(e) => Found::Failed(e.to_string()),
                },
            }
        };
        out.push(Observed {
            object: format!("{}/{}", res.kind, res.name),
            target: Target { resource: kind.resource.clone(), namespace: ns, name: desired.name.clone() },
            stamped,
            prepared: crate::drift::normalize::desired_for_compare(&desired.object),
            found,
        });
    }
    out
}

/// Sends one heal action as field manager `helm`.
pub async fn execute(client: &kube::Client, action: &Action) -> Result<(), kube::Error> {
    let t = &action.target;
    let api: Api<DynamicObject> = match &t.namespace {
        Some(n) => Api::namespaced_with(client.clone(), n, &t.resource),
        None => Api::all_with(client.clone(), &t.resource),
    };
    match &action.op {
        Op::Apply(object) => api.patch(&t.name, &PatchParams::apply(HELM_MANAGER).force(), &Patch::Apply(object)).await.map(|_| ()),
        Op::Create(object) => {
            let obj: DynamicObject = serde_json::from_value(object.clone()).map_err(kube::Error::SerdeError)?;
            api.create(&PostParams { field_manager: Some(HELM_MANAGER.into()), ..Default::default() }, &obj).await.map(|_| ())
        }
        Op::JsonPatch(ops) => {
            let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.clone())).map_err(kube::Error::SerdeError)?;
            api.patch(&t.name, &PatchParams { field_manager: Some(HELM_MANAGER.into()), ..Default::default() }, &Patch::<()>::Json(patch)).await.map(|_| ())
        }
    }
}
