//! Gathers what the release-level findings and the diagnosis of section 6 need, and asks
//! `diagnose` for them. A release whose newest revision is `deployed` costs no request here
//! (its findings come from its history and the check's report); only a `failed` revision, or a
//! `pending-*` one past the timeout (or any, for `driftwatch diagnose`), has its evidence read:
//! its record (hooks, description), its hook objects, the namespace's Warning Events since it
//! started, and the pods of its workloads. Never a Secret's data.

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use serde_json::Value;

use super::{ReleaseStore, Resolver};
use crate::check::{CheckSettings, compare_live};
use crate::diagnose::{self, ContainerState, EventLine, Evidence, HealthFacts, HookState, PodState, Scrubber, Thresholds};
use crate::drift::ObjectState;
use crate::helm::{DesiredObject, Release, ReleaseHistory, ReleaseStatus, split_manifest};
use crate::report::{Finding, FindingResource, ReleaseReport};

/// Workload kinds whose pods are the revision's pods.
const WORKLOADS: [&str; 5] = ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"];
/// Events kept as evidence at most (newest).
const MAX_EVENTS: usize = 50;

/// What to assess.
pub struct Assess<'a> {
    pub history: &'a ReleaseHistory,
    /// The drift check's report against the reference revision.
    pub report: &'a ReleaseReport,
    pub thresholds: Thresholds,
    /// Live objects stamped for the release that the reference manifest lacks (the controller
    /// knows them from its watches; the CLI reads them with [`stamped_objects`]).
    pub orphans: Vec<FindingResource>,
    /// How the check compared (a `PartialUpgrade` compares with the failed revision the same way).
    pub settings: &'a CheckSettings<'a>,
    /// Gather evidence even for a pending revision younger than the timeout (`diagnose`).
    pub always: bool,
}

/// The findings of a release, and the diagnosis of its newest revision when its evidence was read.
pub struct Assessment {
    pub findings: Vec<Finding>,
    /// The diagnosis of the newest revision, when its evidence was read (also on the `Failed`
    /// or `StuckPending` finding, when there is one).
    pub diagnosis: Option<crate::report::Diagnosis>,
    /// API requests made besides the resolver's (which counts its own).
    pub requests: usize,
}

fn needs_evidence(history: &ReleaseHistory, t: Thresholds, always: bool) -> bool {
    let latest = history.latest();
    if latest.status == ReleaseStatus::Failed {
        return true;
    }
    if !latest.status.is_pending() {
        return false;
    }
    if always {
        return true;
    }
    latest.since().is_some_and(|s| (jiff::Timestamp::now().as_second() - s) as f64 > t.pending_timeout.as_secs_f64())
}

pub async fn assess(store: &ReleaseStore, resolver: &Resolver, a: Assess<'_>) -> Assessment {
    let mut out = Assessment { findings: Vec::new(), diagnosis: None, requests: 0 };
    let mut facts = HealthFacts {
        history: a.history,
        now: jiff::Timestamp::now(),
        thresholds: a.thresholds,
        last_deployed: a.report.last_deployed,
        partial: Vec::new(),
        hook_orphans: Vec::new(),
        orphans: a.orphans,
        diagnosis: None,
    };
    if needs_evidence(a.history, a.thresholds, a.always) {
        out.requests += 1;
        match store.fetch(a.history.latest()).await {
            Ok(newest) => {
                let split = split_manifest(&newest.manifest);
                let secrets: Vec<&Value> = split.objects.iter().filter(|o| o.kind == "Secret").map(|o| &o.object).collect();
                let mut public: String = split.objects.iter().filter(|o| o.kind != "Secret").map(|o| o.object.to_string()).collect();
                public.extend(newest.hooks.iter().map(|h| h.manifest.as_str()));
                let scrubber = Scrubber::new(newest.config.0.as_ref(), &secrets, &public);
                let (mut evidence, requests) = gather(resolver, a.history, &newest, &split.objects).await;
                out.requests += requests;
                scrubber.evidence(&mut evidence);
                facts.diagnosis = Some(diagnose::classify(&evidence));
                facts.hook_orphans = evidence
                    .hooks
                    .iter()
                    .filter(|h| h.present && (h.failed.is_some() || (h.running && !a.history.latest().status.is_pending())))
                    .map(|h| FindingResource {
                        api_version: h.api_version.clone(),
                        kind: h.kind.clone(),
                        namespace: Some(a.history.namespace.clone()),
                        name: h.name.clone(),
                        state: Some(if h.failed.is_some() { "failed" } else { "running" }.into()),
                        detail: h.failed.clone(),
                    })
                    .collect();
                if a.history.latest().status == ReleaseStatus::Failed && a.report.error.is_none() {
                    facts.partial = partial(resolver, a.report, &split.objects, &a.history.namespace, newest.info.last_deployed, a.settings).await;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the newest revision for its diagnosis");
            }
        }
    }
    out.findings = diagnose::findings(&facts);
    out.diagnosis = facts.diagnosis;
    out
}

/// Per object of the failed newest revision, which revision its live version matches.
async fn partial(resolver: &Resolver, report: &ReleaseReport, objects: &[DesiredObject], release_ns: &str, deployed_at: Option<jiff::Timestamp>, settings: &CheckSettings<'_>) -> Vec<FindingResource> {
    let mut out = Vec::new();
    for o in objects {
        let Ok(kind) = resolver.resolve(&o.api_version, &o.kind).await else { continue };
        let ns = kind.namespace_of(o.namespace.as_deref(), release_ns);
        let checked = report.resources.iter().find(|r| r.api_version == o.api_version && r.kind == o.kind && r.name == o.name && r.namespace == ns);
        if checked.is_some_and(|c| c.state == ObjectState::Error) {
            continue;
        }
        let live = match resolver.get_live(&kind, ns.as_deref(), &o.name).await {
            Ok(l) => l,
            Err(_) => continue,
        };
        let matches_failed = match &live {
            Some(l) => compare_live(resolver, o, ns.as_deref(), l, deployed_at, settings).await.is_ok_and(|(d, _)| d.fields.is_empty()),
            None => false,
        };
        let matches_reference = checked.is_some_and(|c| c.state == ObjectState::InSync);
        if let Some(state) = diagnose::partial_state(checked.is_some(), live.is_some(), matches_failed, matches_reference) {
            out.push(FindingResource { api_version: o.api_version.clone(), kind: o.kind.clone(), namespace: ns, name: o.name.clone(), state: Some(state.into()), detail: None });
        }
    }
    out
}

/// The evidence of the newest revision: its description, its hooks, the Warning Events since
/// it started, the pods of its workloads. Returns the requests made besides the resolver's.
pub async fn gather(resolver: &Resolver, history: &ReleaseHistory, newest: &Release, objects: &[DesiredObject]) -> (Evidence, usize) {
    let ns = history.namespace.as_str();
    let client = resolver.client().clone();
    let mut requests = 0;
    let mut e = Evidence {
        release: history.name.clone(),
        namespace: ns.to_string(),
        revision: history.latest().revision,
        status: history.latest().status.clone(),
        description: newest.info.description.trim().to_string(),
        reference: history.reference().map(|r| r.revision),
        ..Default::default()
    };
    // Hooks: their live objects.
    let mut hook_jobs = Vec::new();
    for hook in &newest.hooks {
        let split = split_manifest(&hook.manifest);
        let Some(o) = split.objects.first() else { continue };
        let mut state = HookState { api_version: o.api_version.clone(), kind: o.kind.clone(), name: o.name.clone(), events: hook.events.clone(), phase: hook.last_run.phase.clone(), ..Default::default() };
        if let Ok(kind) = resolver.resolve(&o.api_version, &o.kind).await
            && let Ok(Some(live)) = resolver.get_live(&kind, kind.namespace_of(o.namespace.as_deref(), ns).as_deref(), &o.name).await
        {
            state.present = true;
            let (failed, running) = hook_condition(&o.kind, &live);
            state.failed = failed;
            state.running = running;
            if o.kind == "Job" {
                hook_jobs.push(o.name.clone());
            }
        }
        e.hooks.push(state);
    }
    // Warning Events of the namespace since the revision started.
    let since = newest.info.last_deployed.map(|t| t.as_second() - 5);
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    requests += 1;
    if let Ok(list) = events.list(&ListParams::default().fields("type=Warning")).await {
        let mut lines: Vec<EventLine> = list
            .items
            .into_iter()
            .filter(|ev| ev.involved_object.kind.as_deref() != Some("Secret"))
            .map(|ev| {
                let time = ev.last_timestamp.as_ref().map(|t| t.0).or(ev.event_time.as_ref().map(|t| t.0)).or(ev.first_timestamp.as_ref().map(|t| t.0));
                EventLine {
                    time,
                    type_: ev.type_.unwrap_or_default(),
                    reason: ev.reason.unwrap_or_default(),
                    object: format!("{}/{}", ev.involved_object.kind.unwrap_or_default(), ev.involved_object.name.unwrap_or_default()),
                    message: ev.message.unwrap_or_default().trim().to_string(),
                    count: ev.count.unwrap_or(1),
                }
            })
            .filter(|l| since.is_none_or(|s| l.time.is_none_or(|t| t.as_second() >= s)))
            .collect();
        lines.sort_by_key(|l| l.time);
        let skip = lines.len().saturating_sub(MAX_EVENTS);
        e.events = lines.into_iter().skip(skip).collect();
    }
    // Pods of the workloads (and of the hook Jobs).
    let mut selectors: Vec<String> = objects
        .iter()
        .filter(|o| WORKLOADS.contains(&o.kind.as_str()))
        .filter_map(|o| {
            let labels = o.object.pointer("/spec/selector/matchLabels").or_else(|| o.object.pointer("/spec/template/metadata/labels"))?.as_object()?;
            let sel: Vec<String> = labels.iter().filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?))).collect();
            (!sel.is_empty()).then(|| sel.join(","))
        })
        .collect();
    selectors.extend(hook_jobs.iter().map(|j| format!("job-name={j}")));
    selectors.sort();
    selectors.dedup();
    let pods: Api<Pod> = Api::namespaced(client, ns);
    requests += selectors.len();
    // Made first (owned), so that the stream holds no closure over borrowed items: the check
    // runs on spawned tasks.
    let pending: Vec<_> = selectors
        .into_iter()
        .map(|s| {
            let pods = pods.clone();
            async move { pods.list(&ListParams::default().labels(&s)).await }
        })
        .collect();
    let lists: Vec<_> = futures::stream::iter(pending).buffered(4).collect().await;
    let mut seen = std::collections::BTreeSet::new();
    for list in lists.into_iter().flatten() {
        for p in list.items {
            let name = p.metadata.name.clone().unwrap_or_default();
            if seen.insert(name.clone()) {
                e.pods.push(pod_state(name, &p));
            }
        }
    }
    (e, requests)
}

/// A hook object's state: (failed: "reason: message", running).
fn hook_condition(kind: &str, live: &Value) -> (Option<String>, bool) {
    match kind {
        "Job" => {
            let conditions = live.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
            let is = |t: &str| conditions.iter().find(|c| c["type"] == t && c["status"] == "True");
            if let Some(c) = is("Failed") {
                return (Some(format!("{}: {}", c["reason"].as_str().unwrap_or("Failed"), c["message"].as_str().unwrap_or_default())), false);
            }
            (None, is("Complete").is_none() && is("SuccessCriteriaMet").is_none())
        }
        "Pod" => match live.pointer("/status/phase").and_then(Value::as_str) {
            Some("Failed") => (Some(format!("pod phase Failed: {}", live.pointer("/status/reason").and_then(Value::as_str).unwrap_or_default())), false),
            Some("Succeeded") => (None, false),
            _ => (None, true),
        },
        _ => (None, false),
    }
}

fn pod_state(name: String, p: &Pod) -> PodState {
    let status = p.status.clone().unwrap_or_default();
    let images: std::collections::BTreeMap<String, String> = p
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .collect();
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .map(|c| {
            let state = c.state.clone().unwrap_or_default();
            let last = c.last_state.clone().unwrap_or_default();
            let terminated = state.terminated.or(last.terminated).map(|t| (t.reason.unwrap_or_default(), t.exit_code));
            ContainerState {
                name: c.name.clone(),
                image: images.get(&c.name).cloned().unwrap_or_else(|| c.image.clone()),
                waiting: state.waiting.map(|w| (w.reason.unwrap_or_default(), w.message.unwrap_or_default())),
                terminated,
                restarts: c.restart_count,
            }
        })
        .collect();
    let unschedulable = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| format!("{}: {}", c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default()));
    PodState { name, phase: status.phase.unwrap_or_default(), containers, unschedulable }
}

/// Objects of the given kinds in a namespace that Helm stamped (`app.kubernetes.io/managed-by=
/// Helm`, `meta.helm.sh/release-name`), metadata only, by release name. For the CLI (the
/// controller knows them from its watches).
pub async fn stamped_objects(resolver: &Resolver, namespace: &str, kinds: &[(String, String)]) -> Vec<(String, FindingResource)> {
    let mut out = Vec::new();
    for (api_version, kind) in kinds {
        let Ok(k) = resolver.resolve(api_version, kind).await else { continue };
        let api: Api<kube::api::DynamicObject> = if k.namespaced {
            Api::namespaced_with(resolver.client().clone(), namespace, &k.resource)
        } else {
            Api::all_with(resolver.client().clone(), &k.resource)
        };
        let Ok(list) = api.list_metadata(&ListParams::default().labels("app.kubernetes.io/managed-by=Helm")).await else { continue };
        for m in list.items {
            let ann = m.metadata.annotations.clone().unwrap_or_default();
            let (Some(release), Some(rns)) = (ann.get("meta.helm.sh/release-name"), ann.get("meta.helm.sh/release-namespace")) else { continue };
            if rns != namespace {
                continue;
            }
            out.push((
                release.clone(),
                FindingResource { api_version: api_version.clone(), kind: kind.clone(), namespace: m.metadata.namespace.clone(), name: m.metadata.name.clone().unwrap_or_default(), state: None, detail: None },
            ));
        }
    }
    out
}

/// The kinds a Helm chart most often makes: where the CLI looks for the objects of a release
/// that has no record left (with no manifest to say which kinds it had).
pub const COMMON_KINDS: [(&str, &str); 16] = [
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "ServiceAccount"),
    ("v1", "PersistentVolumeClaim"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
    ("networking.k8s.io/v1", "Ingress"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
];
