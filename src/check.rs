//! One drift check of one release: the reference revision's manifest, resolved and compared
//! object by object with the live cluster. Used by `driftwatch check` and the controller.
//! Fails per object, never per release: an object that cannot be checked is an `Error` entry
//! and the rest is still checked.

use futures::StreamExt as _;
use serde_json::Value;

use crate::cluster::{ReleaseStore, ResolveError, Resolver};
use crate::drift::{self, ChangeKind, DiffOptions, DigestKey, FieldDrift, IgnoreRules, ObjectIdentity, ObjectState, Schema};
use crate::report::{ChangeToken, CheckErrorKind, ReleaseReport, ResourceReport, summarize};
use crate::helm::{DesiredObject, ReleaseHistory, split_manifest};

/// How a check runs.
pub struct CheckSettings<'a> {
    pub ignore: &'a IgnoreRules,
    pub ignore_managers: &'a [String],
    /// Count operational annotations (rollout restarts, client-side apply) as drift.
    pub operations_as_drift: bool,
    /// The key of Secret digests (None: this process's random key).
    pub digest_key: Option<&'a DigestKey>,
    /// Confirm local `Modified` verdicts with a server-side dry-run.
    pub confirm: bool,
    /// Objects checked at once.
    pub concurrency: usize,
    /// Earlier verdicts of objects that have not changed since (the controller's watches know).
    pub reuse: Option<&'a dyn Reuse>,
}

impl<'a> CheckSettings<'a> {
    /// The CLI's defaults: these ignore rules, no ignored manager, operations not counted, this
    /// process's digest key, local verdicts confirmed by a dry-run, [`OBJECTS_AT_ONCE`].
    pub fn new(ignore: &'a IgnoreRules) -> Self {
        CheckSettings { ignore, ignore_managers: &[], operations_as_drift: false, digest_key: None, confirm: true, concurrency: OBJECTS_AT_ONCE, reuse: None }
    }
}

/// Lets a re-check skip reading an object that has not changed since an earlier check: the
/// controller knows each object's current [`change_token`] from its watches, and a verdict made
/// from that same version of the object (same revision, same policy) still holds.
pub trait Reuse: Sync {
    /// The earlier verdict for this object, when the object is still at the version that
    /// verdict was made from.
    fn unchanged(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<ResourceReport>;

    /// What the watches last saw of the object: None when they do not know, `Some(None)` when
    /// it is gone (or not Helm's), else its [`change_token`]. A listed copy of another version
    /// (or of an object seen gone) is not used: the object is read again.
    fn current(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Option<ChangeToken>>;
}

/// A decoded revision as checks need it: the release's metadata and its parsed manifest. The
/// user values are dropped (never kept, never shown).
pub struct DecodedRelease {
    pub release: crate::helm::Release,
    pub split: crate::helm::manifest::SplitManifest,
}

/// Objects of one release checked at once (the API server answers in parallel).
pub const OBJECTS_AT_ONCE: usize = 8;
/// Releases checked at once, by `check -A` and by the controller.
pub const RELEASES_AT_ONCE: usize = 8;

/// Decoded revisions kept at most (memory: a manifest as objects is ~10× its gzipped size).
pub const CACHED_RELEASES: usize = 32;

/// What identifies a version of a live object as far as drift goes, from its metadata. For
/// kinds whose API server bumps `metadata.generation` on every spec change (workloads, HPAs,
/// PDBs, Ingresses) it is the generation plus a hash of the metadata a manifest can set, so
/// a status update (the controllers' daily chatter) is not a change; for every other kind it
/// is the resourceVersion.
pub fn change_token(api_version: &str, kind: &str, metadata: &Value) -> ChangeToken {
    use std::hash::{Hash as _, Hasher as _};
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    let spec_generation = matches!(
        (group, kind),
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
            | ("batch", "Job" | "CronJob")
            | ("autoscaling", "HorizontalPodAutoscaler")
            | ("policy", "PodDisruptionBudget")
            | ("networking.k8s.io", "Ingress")
    );
    // A fixed-key hasher: the same metadata gives the same token for the life of the process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match metadata.get("generation").and_then(Value::as_i64) {
        Some(generation) if spec_generation => {
            "generation".hash(&mut h);
            generation.hash(&mut h);
            for field in ["labels", "annotations", "finalizers", "ownerReferences", "deletionTimestamp"] {
                field.hash(&mut h);
                metadata.get(field).map(Value::to_string).unwrap_or_default().hash(&mut h);
            }
        }
        _ => {
            "resourceVersion".hash(&mut h);
            metadata.get("resourceVersion").and_then(Value::as_str).unwrap_or_default().hash(&mut h);
        }
    }
    ChangeToken(h.finish())
}

/// Decoded revisions by (namespace, release, revision): a revision's manifest never changes, so
/// a re-check needs no GET and no parse. One revision per release is kept.
#[derive(Default)]
pub struct ReleaseCache {
    map: std::sync::Mutex<std::collections::HashMap<(String, String, u32), std::sync::Arc<DecodedRelease>>>,
}

impl ReleaseCache {
    pub fn get(&self, ns: &str, name: &str, rev: u32) -> Option<std::sync::Arc<DecodedRelease>> {
        self.map.lock().expect("cache lock").get(&(ns.to_string(), name.to_string(), rev)).cloned()
    }

    fn insert(&self, ns: &str, name: &str, rev: u32, d: std::sync::Arc<DecodedRelease>) {
        let mut m = self.map.lock().expect("cache lock");
        m.retain(|(n, r, _), _| !(n == ns && r == name));
        if m.len() >= CACHED_RELEASES {
            // Bounded: an unchanged release is re-checked from its verdicts without its
            // manifest, so the cache only serves bursts of changes. Evict any one.
            if let Some(k) = m.keys().next().cloned() {
                m.remove(&k);
            }
        }
        m.insert((ns.to_string(), name.to_string(), rev), d);
    }

    /// Forgets a release (uninstalled, or no longer covered).
    pub fn forget(&self, ns: &str, name: &str) {
        self.map.lock().expect("cache lock").retain(|(n, r, _), _| !(n == ns && r == name));
    }
}

/// Why a revision could not be read, and whether trying again may help.
#[derive(Clone, Debug)]
pub struct FetchError {
    pub message: String,
    /// The payload was read and could not be decoded.
    pub decode: bool,
    /// The API server did not answer (not a corrupt record, not a deleted one).
    pub transient: bool,
}

/// A record's decoded revision, from the cache when it is there.
pub async fn decoded(store: &ReleaseStore, cache: Option<&ReleaseCache>, record: &crate::helm::RecordMeta) -> Result<std::sync::Arc<DecodedRelease>, FetchError> {
    if let Some(hit) = cache.and_then(|c| c.get(&record.namespace, &record.release, record.revision)) {
        return Ok(hit);
    }
    let mut release = store.fetch(record).await.map_err(|e| FetchError {
        transient: e.is_transient(),
        decode: matches!(e, crate::cluster::StorageError::Decode { .. }),
        message: e.to_string(),
    })?;
    release.config = Default::default();
    let split = split_manifest(&release.manifest);
    // Kept only as objects: the text is not needed again (memory, with a thousand releases).
    release.manifest = String::new();
    let d = std::sync::Arc::new(DecodedRelease { release, split });
    if let Some(c) = cache {
        c.insert(&record.namespace, &record.release, record.revision, d.clone());
    }
    Ok(d)
}

pub async fn check_release(
    store: &ReleaseStore,
    resolver: &Resolver,
    history: &ReleaseHistory,
    revision: Option<u32>,
    settings: &CheckSettings<'_>,
) -> ReleaseReport {
    check_release_cached(store, resolver, None, history, revision, settings).await
}

pub async fn check_release_cached(
    store: &ReleaseStore,
    resolver: &Resolver,
    cache: Option<&ReleaseCache>,
    history: &ReleaseHistory,
    revision: Option<u32>,
    settings: &CheckSettings<'_>,
) -> ReleaseReport {
    let latest = history.latest();
    let mut report = ReleaseReport::new(&history.name, &history.namespace, latest.revision, latest.status.clone());
    let record = match revision {
        Some(n) => history.revision(n).ok_or_else(|| format!("release {}/{} has no revision {n}", history.namespace, history.name)),
        None => history.reference().ok_or_else(|| {
            format!(
                "release {}/{} has no deployed revision (newest: {} is {}); nothing to compare against",
                history.namespace, history.name, latest.revision, latest.status
            )
        }),
    };
    let record = match record {
        Ok(r) => r,
        Err(e) => {
            report.error = Some(e);
            report.error_kind = Some(CheckErrorKind::NoReference);
            return report;
        }
    };
    let decoded = match decoded(store, cache, record).await {
        Ok(d) => d,
        Err(e) => {
            report.revision = record.revision;
            report.transient = e.transient;
            report.error_kind = Some(if e.decode { CheckErrorKind::Decode } else { CheckErrorKind::Read });
            report.error = Some(e.message);
            return report;
        }
    };
    let release = &decoded.release;
    report.revision = release.version;
    report.chart = release.chart.metadata.name.clone();
    report.chart_version = release.chart.metadata.version.clone();
    report.app_version = release.chart.metadata.app_version.clone();
    // The record's label is current; a cached payload's status may be older.
    report.status = record.status.clone();
    report.last_deployed = release.info.last_deployed;
    report.apply_method = release.apply_method;
    let split = &decoded.split;
    for e in &split.errors {
        report.resources.push(ResourceReport {
            api_version: String::new(),
            kind: String::new(),
            namespace: None,
            name: e.template.clone().unwrap_or_else(|| format!("document {}", e.index)),
            state: ObjectState::Error,
            fields: Vec::new(),
            message: Some(e.to_string()),
            operations: Vec::new(),
            seen: None,
            change_token: None,
            transient: false,
        });
    }
    let namespace = release.namespace.clone();
    // While Helm holds the release's lock (the newest revision is pending-*), it is moving the
    // objects to that revision, from the reference or from a failed revision after it: a live
    // value of one of these is Helm's work in progress, not drift. An unreadable pending record
    // leaves the rule out (an unreadable failed one, just that revision). Decoded without the
    // cache, which keeps one revision per release: the reference. (The function, not the
    // reference revision `decoded` above.)
    let mut in_flight = Vec::new();
    for (i, r) in history.in_transit(record.revision).into_iter().enumerate().filter(|_| revision.is_none()) {
        match self::decoded(store, None, r).await {
            Ok(decoded) => in_flight.push(Transit { revision: r.revision, status: r.status.to_string(), decoded }),
            Err(_) if i == 0 => break,
            Err(_) => {}
        }
    }
    let in_flight = InFlight(in_flight);
    // The futures are made first, so that the stream holds no closure over borrowed items
    // (which would keep the whole check from being spawned on another task).
    let deployed_at = release.info.last_deployed;
    let pending: Vec<_> = split.objects.iter().map(|o| check_object(resolver, o, &namespace, deployed_at, &in_flight, settings)).collect();
    let checked: Vec<(ResourceReport, usize)> = futures::stream::iter(pending).buffered(settings.concurrency.max(1)).collect().await;
    for (r, confirmed_away) in checked {
        report.confirmed_away += confirmed_away;
        report.resources.push(r);
    }
    report.transient = report.resources.iter().any(|r| r.transient);
    report.summary = summarize(&report.resources);
    report.drifted = report.summary.modified + report.summary.missing + report.summary.added > 0;
    report
}

/// The revisions Helm is moving a release's objects between while it holds the lock: the
/// pending one first, then failed ones after the reference. Empty when no operation is under way.
struct InFlight(Vec<Transit>);

struct Transit {
    revision: u32,
    status: String,
    decoded: std::sync::Arc<DecodedRelease>,
}

impl Transit {
    fn object(&self, o: &DesiredObject) -> Option<&DesiredObject> {
        self.decoded.split.objects.iter().find(|p| p.api_version == o.api_version && p.kind == o.kind && p.name == o.name && p.namespace == o.namespace)
    }
}

impl InFlight {
    /// "revision 3 (pending-rollback)" or "revision 3 (pending-rollback) or 2 (failed)".
    fn describe(&self) -> String {
        let each: Vec<String> = self.0.iter().map(|t| format!("{} ({})", t.revision, t.status)).collect();
        format!("revision {}", each.join(" or "))
    }
}

async fn check_object(
    resolver: &Resolver,
    o: &DesiredObject,
    release_ns: &str,
    deployed_at: Option<jiff::Timestamp>,
    in_flight: &InFlight,
    settings: &CheckSettings<'_>,
) -> (ResourceReport, usize) {
    let mut report = ResourceReport {
        api_version: o.api_version.clone(),
        kind: o.kind.clone(),
        namespace: None,
        name: o.name.clone(),
        state: ObjectState::Error,
        fields: Vec::new(),
        message: None,
        operations: Vec::new(),
        seen: None,
        change_token: None,
        transient: false,
    };
    let kind = match resolver.resolve(&o.api_version, &o.kind).await {
        Ok(k) => k,
        Err(e) => {
            report.transient = e.is_transient();
            report.namespace = o.namespace.clone().or_else(|| Some(release_ns.to_string()));
            report.message = Some(e.to_string());
            return (report, 0);
        }
    };
    let ns = kind.namespace_of(o.namespace.as_deref(), release_ns);
    report.namespace = ns.clone();
    if let Some(hit) = settings.reuse.and_then(|r| r.unchanged(&o.api_version, &o.kind, ns.as_deref(), &o.name)) {
        return (hit, 0);
    }
    // A listed copy must be the version the watches have seen: a listing made before the edit
    // that queued this check would hide the edit.
    let seen = settings.reuse.and_then(|r| r.current(&o.api_version, &o.kind, ns.as_deref(), &o.name));
    let is_seen = |live: &Value| match &seen {
        None => true,
        Some(None) => false,
        Some(Some(t)) => live.get("metadata").is_some_and(|m| change_token(&o.api_version, &o.kind, m) == *t),
    };
    let live = match resolver.read_live(&kind, ns.as_deref(), &o.name, &is_seen).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            report.state = ObjectState::Missing;
            if let Some(t) = in_flight.0.iter().find(|t| t.object(o).is_none()) {
                // The pending revision drops it (Helm deletes it as part of the change), or the
                // failed one it starts from did (the pending one puts it back).
                report.state = ObjectState::InSync;
                report.message = Some(format!("revision {} ({}) has no such object: Helm's work in progress, not drift", t.revision, t.status));
            }
            return (report, 0);
        }
        Err(e) => {
            report.transient = e.is_transient();
            report.message = Some(describe_read_error(&e, &o.kind, ns.as_deref(), &o.name));
            return (report, 0);
        }
    };
    report.change_token = live.get("metadata").map(|m| change_token(&o.api_version, &o.kind, m));
    let (drift::ObjectDiff { mut state, mut fields, operations }, _) = match compare_live(resolver, o, ns.as_deref(), &live, deployed_at, settings).await {
        Ok(compared) => compared,
        Err(e) => {
            report.message = Some(format!("cannot read the schema of {} {}: {e}", o.api_version, o.kind));
            report.transient = true;
            return (report, 0);
        }
    };
    report.operations = operations;
    let mut confirmed_away = 0;
    if settings.confirm && fields.iter().any(|f| f.change != ChangeKind::Added) {
        match resolver.dry_run_apply(&kind, ns.as_deref(), &o.object).await {
            Ok(applied) => {
                let before = fields.len();
                let at = |obj: &Value, f: &FieldDrift| drift::compare::navigate(obj, &f.locator).map(|(v, _)| v.clone());
                fields.retain(|f| f.change == ChangeKind::Added || at(&applied, f) != at(&live, f));
                confirmed_away = before - fields.len();
                state = ObjectState::of_fields(&fields);
            }
            Err(e) => {
                report.message = Some(format!("not confirmed by a server-side dry-run ({e}); this is the local comparison's verdict"));
            }
        }
    }
    if !fields.is_empty() && !in_flight.0.is_empty() {
        // Drift is what differs from every revision in play: the reference's, the one Helm is
        // applying and the failed ones it moves from (a revision without the object has no say:
        // an object the pending revision drops keeps its verdict until it is gone).
        let before = fields.len();
        for t in &in_flight.0 {
            let Some(next) = t.object(o) else { continue };
            if let Ok((toward, _)) = compare_live(resolver, next, ns.as_deref(), &live, deployed_at, settings).await {
                fields.retain(|f| toward.fields.iter().any(|t| t.locator == f.locator && t.change == f.change));
            }
        }
        state = ObjectState::of_fields(&fields);
        if fields.len() < before {
            report.message = Some(format!(
                "Helm holds the release's lock: {} field(s) already as {} sets them are its work in progress, not drift",
                before - fields.len(),
                in_flight.describe()
            ));
        }
    }
    report.state = state;
    report.fields = fields;
    (report, confirmed_away)
}

/// One desired object against its live version, the one way Driftwatch compares (the check
/// and the heal alike): the identity ignore rules select on includes the live labels and
/// annotations; the schema is the API server's (the built-in table when it has none); the
/// policy's ignore paths, managers and switches apply. Returns the comparison and the ignored
/// paths (a heal leaves them out of what it applies).
pub async fn compare_live<'s>(
    resolver: &Resolver,
    o: &DesiredObject,
    ns: Option<&str>,
    live: &Value,
    deployed_at: Option<jiff::Timestamp>,
    settings: &CheckSettings<'s>,
) -> Result<(drift::ObjectDiff, Vec<&'s str>), ResolveError> {
    let schema = resolver.schema(&o.api_version, &o.kind).await?;
    let schema: &dyn Schema = match &schema {
        Some(s) => s.as_ref(),
        None => &drift::BuiltinSchema,
    };
    let paths = settings.ignore.paths_for(&identity_of(o, ns, live));
    let opts = DiffOptions {
        paths: &paths,
        managers: settings.ignore_managers,
        operations_as_drift: settings.operations_as_drift,
        deployed_at,
        digest_key: settings.digest_key,
    };
    Ok((drift::diff_object(&o.object, live, schema, opts), paths))
}

/// What ignore targets match: the object's identity with its live labels and annotations.
pub fn identity_of<'a>(o: &'a DesiredObject, ns: Option<&'a str>, live: &Value) -> ObjectIdentity<'a> {
    let (group, version) = o.api_version.split_once('/').unwrap_or(("", &o.api_version));
    let string_map = |v: Option<&Value>| -> std::collections::BTreeMap<String, String> {
        v.and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default()
    };
    ObjectIdentity {
        group,
        version,
        kind: &o.kind,
        name: &o.name,
        namespace: ns.unwrap_or(""),
        labels: string_map(live.pointer("/metadata/labels")),
        annotations: string_map(live.pointer("/metadata/annotations")),
    }
}

fn describe_read_error(e: &ResolveError, kind: &str, ns: Option<&str>, name: &str) -> String {
    let what = match ns {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    };
    format!("cannot read {what}: {e}")
}

#[cfg(test)]
mod tests {
    use super::change_token;
    use serde_json::json;

    fn meta(generation: i64, rv: &str, labels: serde_json::Value) -> serde_json::Value {
        json!({"name": "web", "namespace": "prod", "generation": generation, "resourceVersion": rv, "labels": labels})
    }

    #[test]
    fn a_status_update_is_not_a_change_of_a_workload() {
        let before = change_token("apps/v1", "Deployment", &meta(3, "100", json!({"app": "web"})));
        // kube-controller-manager writes status: new resourceVersion, same generation.
        assert_eq!(before, change_token("apps/v1", "Deployment", &meta(3, "101", json!({"app": "web"}))));
        // A spec edit bumps the generation; a label edit does not, but the labels are hashed.
        assert_ne!(before, change_token("apps/v1", "Deployment", &meta(4, "102", json!({"app": "web"}))));
        assert_ne!(before, change_token("apps/v1", "Deployment", &meta(3, "102", json!({"app": "api"}))));
        let with = |field: &str, v: serde_json::Value| {
            let mut m = meta(3, "102", json!({"app": "web"}));
            m[field] = v;
            change_token("apps/v1", "Deployment", &m)
        };
        assert_ne!(before, with("annotations", json!({"a": "b"})));
        assert_ne!(before, with("finalizers", json!(["x"])));
        assert_ne!(before, with("ownerReferences", json!([{"name": "o"}])));
        assert_ne!(before, with("deletionTimestamp", json!("2026-01-01T00:00:00Z")));
    }

    #[test]
    fn other_kinds_change_with_every_resource_version() {
        // A ConfigMap has no spec/status split: its generation says nothing.
        let a = change_token("v1", "ConfigMap", &meta(1, "100", json!({})));
        assert_ne!(a, change_token("v1", "ConfigMap", &meta(1, "101", json!({}))));
        assert_eq!(a, change_token("v1", "ConfigMap", &meta(1, "100", json!({}))));
        // Nor does a custom resource's (its CRD may have no status subresource).
        let w = change_token("test.driftwatch.io/v1", "Widget", &meta(1, "7", json!({})));
        assert_ne!(w, change_token("test.driftwatch.io/v1", "Widget", &meta(1, "8", json!({}))));
        // A workload without a generation falls back to the resourceVersion too.
        let no_gen = json!({"name": "web", "resourceVersion": "5"});
        assert_eq!(change_token("apps/v1", "Deployment", &no_gen), change_token("v1", "ConfigMap", &json!({"resourceVersion": "5"})));
    }
}
