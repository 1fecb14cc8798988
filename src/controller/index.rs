//! What the controller knows, with no client in it: Helm's release records (from the storage
//! watches), the change tokens of the live objects Helm made (from the metadata watches), each
//! release's last verdicts and what was last written for it. Every change that comes in
//! returns the releases to re-check, as data; the watches only carry changes here and those
//! answers to the queue. Tested with no API server.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use kube::api::ObjectMeta;
use serde_json::Value;

use crate::helm::{Driver, RecordMeta, ReleaseStatus};
use crate::drift::ObjectState;
use crate::report::{ChangeToken, ReleaseReport, ResourceReport};

/// (namespace, release name).
pub type ReleaseKey = (String, String);
/// (apiVersion, kind) of a watched kind.
pub type KindKey = (String, String);
/// (namespace or "", name) of an object.
pub type ObjectId = (String, String);

/// Release records by watch. `listed` counts the storage watches that have finished their first
/// listing; until all have, the records are read from the API server instead.
#[derive(Default)]
pub struct RecordIndex {
    pub listed: usize,
    pub watches: usize,
    by_release: HashMap<ReleaseKey, HashMap<(Driver, String), RecordMeta>>,
}

impl RecordIndex {
    pub fn ready(&self) -> bool {
        self.watches > 0 && self.listed >= self.watches
    }

    pub fn of_release(&self, ns: &str, name: &str) -> Vec<RecordMeta> {
        self.by_release.get(&(ns.to_string(), name.to_string())).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    pub fn all(&self) -> Vec<RecordMeta> {
        self.by_release.values().flat_map(|m| m.values().cloned()).collect()
    }

    /// A record was written: its release is re-checked.
    pub fn apply(&mut self, r: RecordMeta) -> ReleaseKey {
        let key = (r.namespace.clone(), r.release.clone());
        self.by_release.entry(key.clone()).or_default().insert((r.driver, r.object_name.clone()), r);
        key
    }

    /// A record was deleted: its release is re-checked.
    pub fn delete(&mut self, r: &RecordMeta) -> ReleaseKey {
        let key = (r.namespace.clone(), r.release.clone());
        if let Some(m) = self.by_release.get_mut(&key) {
            m.remove(&(r.driver, r.object_name.clone()));
            if m.is_empty() {
                self.by_release.remove(&key);
            }
        }
        key
    }

    /// Replaces one watch's records (driver, scope) after it (re-)listed; returns the releases
    /// whose records of that driver changed (added, removed or relabelled): the only ones a
    /// re-list after a broken watch needs to re-check.
    pub fn reset(&mut self, driver: Driver, scope: Option<&str>, records: Vec<RecordMeta>) -> HashSet<ReleaseKey> {
        type Snapshot = HashMap<ReleaseKey, Vec<RecordMeta>>;
        let snapshot = |index: &HashMap<ReleaseKey, HashMap<(Driver, String), RecordMeta>>| -> Snapshot {
            index
                .iter()
                .filter(|((n, _), _)| scope.is_none_or(|s| s == n))
                .map(|(k, m)| {
                    let mut v: Vec<_> = m.iter().filter(|((d, _), _)| *d == driver).map(|(_, r)| r.clone()).collect();
                    v.sort_by(|a, b| a.object_name.cmp(&b.object_name));
                    (k.clone(), v)
                })
                .filter(|(_, v)| !v.is_empty())
                .collect()
        };
        let before = snapshot(&self.by_release);
        self.by_release.retain(|(n, _), m| {
            if scope.is_none_or(|s| s == n) {
                m.retain(|(d, _), _| *d != driver);
            }
            !m.is_empty()
        });
        for r in records {
            self.apply(r);
        }
        let after = snapshot(&self.by_release);
        before.keys().chain(after.keys()).filter(|k| before.get(*k) != after.get(*k)).cloned().collect()
    }
}

/// The live objects of one watched kind that Helm made: id (`namespace/name`, the namespace
/// empty for a cluster-scoped object) → (change token, release), and the scopes whose watch has
/// listed: None (one watch over the whole cluster) or namespaces (one watch per watched
/// namespace). An object vouches for nothing until its scope has listed.
///
/// Kept for every object Helm made, so kept small (memory, issue 18): the id is one shared
/// string (the release's stamps and verdicts point at the same one), the token a 64-bit digest,
/// the release a pointer to one copy of its key.
#[derive(Default)]
struct KindIndex {
    listed: HashSet<Option<String>>,
    objects: HashMap<Arc<str>, (ChangeToken, Arc<ReleaseKey>)>,
}

impl KindIndex {
    fn listed(&self, namespace: &str) -> bool {
        self.listed.contains(&None) || self.listed.contains(&Some(namespace.to_string()))
    }
}

/// An object's id as the index keeps it: `namespace/name` (no name or namespace holds a `/`).
fn joined(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The namespace of a joined id ("" for a cluster-scoped object).
fn namespace_of(id: &str) -> &str {
    id.split_once('/').map_or("", |(ns, _)| ns)
}

/// The (namespace, name) of a joined id.
fn split(id: &str) -> ObjectId {
    let (ns, name) = id.split_once('/').unwrap_or(("", id));
    (ns.to_string(), name.to_string())
}

/// An object Helm made, as its metadata watch sees it: its id, change token
/// ([`crate::check::change_token`]) and release (from Helm's annotations). None for an object
/// Helm's annotations do not name, and for a hook (`helm.sh/hook`): never in a manifest.
pub fn helm_object(kind: &KindKey, meta: &ObjectMeta) -> Option<(ObjectId, ChangeToken, ReleaseKey)> {
    let ann = meta.annotations.as_ref()?;
    if ann.contains_key("helm.sh/hook") {
        return None;
    }
    let release = (ann.get("meta.helm.sh/release-namespace")?.clone(), ann.get("meta.helm.sh/release-name")?.clone());
    let id = (meta.namespace.clone().unwrap_or_default(), meta.name.clone()?);
    Some((id, meta_token(kind, meta), release))
}

/// [`crate::check::change_token`] of an object's metadata as a watch gives it: the same token
/// its JSON gives (a read is matched against it), from the fields the token covers only (the
/// metadata's managed fields, the bulk of it, are not turned into JSON for every event).
fn meta_token(kind: &KindKey, meta: &ObjectMeta) -> ChangeToken {
    let mut m = serde_json::Map::new();
    let mut put = |key: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(key.to_string(), v);
        }
    };
    put("generation", meta.generation.map(Value::from));
    put("resourceVersion", meta.resource_version.clone().map(Value::from));
    put("labels", meta.labels.as_ref().and_then(|v| serde_json::to_value(v).ok()));
    put("annotations", meta.annotations.as_ref().and_then(|v| serde_json::to_value(v).ok()));
    put("finalizers", meta.finalizers.as_ref().and_then(|v| serde_json::to_value(v).ok()));
    put("ownerReferences", meta.owner_references.as_ref().and_then(|v| serde_json::to_value(v).ok()));
    put("deletionTimestamp", meta.deletion_timestamp.as_ref().and_then(|v| serde_json::to_value(v).ok()));
    crate::check::change_token(&kind.0, &kind.1, &Value::Object(m))
}

/// One release's last report and what it was made against: the reference revision, the policy
/// fingerprint (key@generation) and the newest revision and its status. Each resource in it
/// carries the change token of the object it was made from.
#[derive(Clone, Debug)]
pub struct Verdicts {
    pub revision: u32,
    pub policy: String,
    pub report: ReleaseReport,
    pub latest: (u32, ReleaseStatus),
}

impl Verdicts {
    /// Whether these verdicts can serve a check of the same release now: the same reference
    /// revision, the same policy, and the same newest revision in the same state (a pending
    /// revision changes what counts as drift).
    pub fn hold_for(&self, reference: u32, policy: &str, latest: &(u32, ReleaseStatus)) -> bool {
        self.revision == reference && self.policy == policy && &self.latest == latest
    }
}

/// One object's verdict as the index keeps it: an object in sync with nothing more to say (most
/// of them) as its kind, shared id and token; any other whole.
enum Kept {
    InSync { kind: u16, id: Arc<str>, namespaced: bool, token: ChangeToken },
    Whole(Box<ResourceReport>),
}

/// A release's [`Verdicts`] as the index keeps them: the report without its resources, and the
/// resources as [`Kept`].
struct KeptVerdicts {
    revision: u32,
    policy: String,
    latest: (u32, ReleaseStatus),
    report: ReleaseReport,
    resources: Vec<Kept>,
}

/// What was last written for a release (or found written at start-up).
#[derive(Clone, Debug)]
pub struct Memo {
    /// What the release's report counts for its policy.
    pub tally: Tally,
    pub status: super::status::Written,
    pub written_at: Instant,
}

impl Memo {
    /// What an existing report says (after a restart or a leadership change: an unchanged
    /// status is not written again and condition times are kept).
    pub fn of_status(st: &crate::api::DriftReportStatus) -> Memo {
        Memo { tally: Tally::of_status(st), status: super::status::Written::from_status(st), written_at: Instant::now() }
    }
}

/// What a policy's status counts of one release's report: the policy that covers it, whether it
/// drifted, whether it is unhealthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    pub policy: String,
    pub drifted: bool,
    pub unhealthy: bool,
}

impl Tally {
    pub fn of_status(st: &crate::api::DriftReportStatus) -> Tally {
        Tally {
            policy: st.policy.clone().unwrap_or_default(),
            drifted: st.drift.as_deref() == Some("Drifted"),
            unhealthy: st.conditions.iter().any(|c| c.type_ == "ReleaseHealthy" && c.status == "False"),
        }
    }
}

#[derive(Default)]
pub struct Index {
    pub records: RecordIndex,
    live: HashMap<KindKey, KindIndex>,
    /// The kinds the index has met, numbered (verdicts and stamps name a kind by its number).
    kinds: Vec<KindKey>,
    /// One copy of each release key that live objects, stamps and verdicts point at.
    releases: HashSet<Arc<ReleaseKey>>,
    verdicts: HashMap<ReleaseKey, KeptVerdicts>,
    written: HashMap<ReleaseKey, Memo>,
    /// The live objects each release's stamps name (the reverse of `live`): for
    /// `OrphanedResources` and `LostRecords`, with no scan.
    stamped: HashMap<Arc<ReleaseKey>, HashSet<(u16, Arc<str>)>>,
    /// Whether `written` was seeded from the existing reports (one LIST) since the last start
    /// or leadership change: if so, a release with no memo has no report.
    pub seeded: bool,
}

impl Index {
    // --- shared names -------------------------------------------------------------------

    fn kind_no(&mut self, kind: &KindKey) -> u16 {
        match self.kinds.iter().position(|k| k == kind) {
            Some(n) => n as u16,
            None => {
                self.kinds.push(kind.clone());
                (self.kinds.len() - 1) as u16
            }
        }
    }

    fn known_kind(&self, kind: &KindKey) -> Option<u16> {
        self.kinds.iter().position(|k| k == kind).map(|n| n as u16)
    }

    /// The one copy of a release key.
    fn release(&mut self, key: ReleaseKey) -> Arc<ReleaseKey> {
        if let Some(r) = self.releases.get(&key) {
            return r.clone();
        }
        let r = Arc::new(key);
        self.releases.insert(r.clone());
        r
    }

    /// The id string the live index already holds for this object, else a new one.
    fn shared_id(&self, kind: &KindKey, id: &str) -> Arc<str> {
        self.live.get(kind).and_then(|k| k.objects.get_key_value(id)).map(|(a, _)| a.clone()).unwrap_or_else(|| Arc::from(id))
    }

    // --- live objects -------------------------------------------------------------------

    /// An object's change token, once its kind's watch has listed.
    pub fn token(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<ChangeToken> {
        self.seen(api_version, kind, namespace, name).flatten()
    }

    /// What the kind's watch has seen of the object: None when it has not listed that
    /// namespace; `Some(None)` when it has and holds no such Helm-made object; else its token.
    pub fn seen(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Option<ChangeToken>> {
        let k = self.live.get(&(api_version.to_string(), kind.to_string())).filter(|i| i.listed(namespace))?;
        Some(k.objects.get(joined(namespace, name).as_str()).map(|(t, _)| *t))
    }

    /// A kind's watch over `scope` (None: the whole cluster; a namespace) (re-)listed the
    /// objects Helm made: the releases whose verdict was made against another version of one
    /// of them, or against one in that scope that is gone, are re-checked (an object that
    /// changed between a check's read and this listing has no event of its own).
    pub fn live_listed(&mut self, kind: &KindKey, scope: Option<&str>, listing: Vec<(ObjectId, ChangeToken, ReleaseKey)>) -> HashSet<ReleaseKey> {
        let in_scope = |ns: &str| scope.is_none_or(|s| s == ns);
        let listing: Vec<(String, ChangeToken, ReleaseKey)> = listing.into_iter().filter(|(id, _, _)| in_scope(&id.0)).map(|(id, t, r)| (joined(&id.0, &id.1), t, r)).collect();
        let no = self.kind_no(kind);
        let mut stale: HashSet<ReleaseKey> = listing
            .iter()
            .filter(|(id, token, release)| {
                let verdict = self.verdicts.get(release).and_then(|v| v.resources.iter().find(|r| r.is(no, &self.kinds, id)));
                verdict.is_some_and(|r| r.token() != Some(*token))
            })
            .map(|(_, _, release)| release.clone())
            .collect();
        let listed: HashSet<&str> = listing.iter().map(|(id, _, _)| id.as_str()).collect();
        for (release, v) in &self.verdicts {
            let gone = v.resources.iter().any(|r| r.token().is_some() && r.of_kind(no, &self.kinds) && in_scope(r.namespace()) && !listed.contains(r.id().as_ref()));
            if gone {
                stale.insert(release.clone());
            }
        }
        drop(listed);
        // The scope's objects are replaced by the listing's, and their stamps with them.
        let entry = self.live.entry(kind.clone()).or_default();
        let dropped: Vec<(Arc<str>, Arc<ReleaseKey>)> = entry.objects.iter().filter(|(id, _)| in_scope(namespace_of(id))).map(|(id, (_, r))| (id.clone(), r.clone())).collect();
        entry.objects.retain(|id, _| !in_scope(namespace_of(id)));
        entry.listed.insert(scope.map(str::to_string));
        for (id, release) in dropped {
            self.unstamp(no, &id, &release);
        }
        for (id, token, release) in listing {
            let release = self.release(release);
            let id: Arc<str> = Arc::from(id);
            self.stamped.entry(release.clone()).or_default().insert((no, id.clone()));
            self.live.get_mut(kind).expect("made above").objects.insert(id, (token, release));
        }
        stale
    }

    /// An object was written. Helm's (`helm` is its [`helm_object`]): its release is re-checked
    /// when its change token moved (a status update changes nothing a manifest says). Not (or no
    /// longer) stamped by Helm: forgotten, no longer vouched for by the index.
    /// Returns the release with the token the index had before (None: none).
    pub fn live_applied(&mut self, kind: &KindKey, id: ObjectId, helm: Option<(ChangeToken, ReleaseKey)>) -> Option<(ReleaseKey, Option<ChangeToken>)> {
        let no = self.kind_no(kind);
        let id = joined(&id.0, &id.1);
        match helm {
            Some((token, release)) => {
                let release = self.release(release);
                let shared = self.shared_id(kind, &id);
                let before = self.live.entry(kind.clone()).or_default().objects.insert(shared.clone(), (token, release.clone()));
                if let Some((_, was)) = before.as_ref().filter(|(_, was)| *was != release) {
                    let was = was.clone();
                    self.unstamp(no, &shared, &was);
                }
                self.stamped.entry(release.clone()).or_default().insert((no, shared));
                let before = before.map(|(t, _)| t);
                (before != Some(token)).then(|| ((*release).clone(), before))
            }
            None => {
                if let Some((_, was)) = self.live.get_mut(kind).and_then(|k| k.objects.remove(id.as_str())) {
                    self.unstamp(no, &id, &was);
                }
                None
            }
        }
    }

    /// An object was deleted: its release (from its annotations, else from the index) is
    /// re-checked.
    pub fn live_deleted(&mut self, kind: &KindKey, id: &ObjectId, release: Option<ReleaseKey>) -> Option<ReleaseKey> {
        let id = joined(&id.0, &id.1);
        let known = self.live.get_mut(kind).and_then(|k| k.objects.remove(id.as_str())).map(|(_, r)| r);
        if let (Some(r), Some(no)) = (&known, self.known_kind(kind)) {
            self.unstamp(no, &id, r);
        }
        release.or(known.map(|r| (*r).clone()))
    }

    fn unstamp(&mut self, kind: u16, id: &str, release: &Arc<ReleaseKey>) {
        if let Some(set) = self.stamped.get_mut(&**release) {
            set.retain(|(k, i)| !(*k == kind && &**i == id));
            if set.is_empty() {
                // Every live object of the release is stamped: with no stamp left, nothing
                // points at its key.
                self.stamped.remove(&**release);
                self.releases.remove(&**release);
            }
        }
    }

    /// The live objects (of the watched kinds) whose Helm stamps name a release, sorted.
    pub fn stamped_for(&self, release: &ReleaseKey) -> Vec<(KindKey, ObjectId)> {
        let mut out: Vec<(KindKey, ObjectId)> = self.stamped.get(release).map(|s| s.iter().map(|(k, id)| (self.kinds[*k as usize].clone(), split(id))).collect()).unwrap_or_default();
        out.sort();
        out
    }

    /// Releases named by live objects' stamps (for a start-up pass: those without records are
    /// lost releases).
    pub fn stamped_releases(&self) -> Vec<ReleaseKey> {
        self.stamped.keys().map(|r| (**r).clone()).collect()
    }

    // --- verdicts -----------------------------------------------------------------------

    /// Takes a release's last verdicts (a reconcile puts new ones back when its check ran).
    pub fn take_verdicts(&mut self, key: &ReleaseKey) -> Option<Verdicts> {
        let kept = self.verdicts.remove(key)?;
        let mut report = kept.report;
        report.resources = kept.resources.iter().map(|r| r.report(&self.kinds)).collect();
        Some(Verdicts { revision: kept.revision, policy: kept.policy, report, latest: kept.latest })
    }

    pub fn keep_verdicts(&mut self, key: ReleaseKey, v: Verdicts) {
        let Verdicts { revision, policy, mut report, latest } = v;
        let resources = std::mem::take(&mut report.resources).into_iter().map(|r| self.kept(r)).collect();
        self.verdicts.insert(key, KeptVerdicts { revision, policy, latest, report, resources });
    }

    /// A resource's verdict as the index keeps it.
    fn kept(&mut self, r: ResourceReport) -> Kept {
        let plain = r.state == ObjectState::InSync && r.fields.is_empty() && r.message.is_none() && r.operations.is_empty() && r.seen.is_none() && !r.transient;
        match r.change_token {
            Some(token) if plain => {
                let kind = (r.api_version, r.kind);
                let no = self.kind_no(&kind);
                let id = self.shared_id(&kind, &joined(r.namespace.as_deref().unwrap_or(""), &r.name));
                Kept::InSync { kind: no, id, namespaced: r.namespace.is_some(), token }
            }
            _ => Kept::Whole(Box::new(r)),
        }
    }

    /// The earlier report, if every object it covers was read (none missing or in error) and
    /// is still at the version it was checked at.
    pub fn still_valid(&self, v: &Verdicts) -> Option<ReleaseReport> {
        let unchanged = v.report.resources.iter().all(|r| {
            r.change_token.is_some() && self.token(&r.api_version, &r.kind, r.namespace.as_deref().unwrap_or(""), &r.name) == r.change_token
        });
        unchanged.then(|| v.report.clone())
    }

    // --- what was written ---------------------------------------------------------------

    pub fn written(&self, key: &ReleaseKey) -> Option<&Memo> {
        self.written.get(key)
    }

    /// What each written report counts for its policy.
    pub fn all_written(&self) -> impl Iterator<Item = &Tally> + Clone {
        self.written.values().map(|m| &m.tally)
    }

    /// A report was written (or found at start-up, `keep_earlier`: a memo already there wins).
    pub fn wrote(&mut self, key: ReleaseKey, memo: Memo, keep_earlier: bool) {
        if keep_earlier {
            self.written.entry(key).or_insert(memo);
        } else {
            self.written.insert(key, memo);
        }
    }

    /// This replica became the leader of the releases of the namespaces `in_term` accepts (all
    /// of them, or a shard's): what it remembers having written for them may have been
    /// overwritten by the holder before it, so their reports are read again before any is
    /// written.
    pub fn new_term(&mut self, in_term: impl Fn(&str) -> bool) {
        self.written.retain(|k, _| !in_term(&k.0));
        self.seeded = false;
    }

    /// The releases of the namespaces `gone` accepts are another replica's now (their shard
    /// moved): forget what was checked and written for them. Returns the releases forgotten.
    pub fn forget_where(&mut self, gone: impl Fn(&str) -> bool) -> Vec<ReleaseKey> {
        let mut out: Vec<ReleaseKey> = self.verdicts.keys().chain(self.written.keys()).filter(|k| gone(&k.0)).cloned().collect();
        out.sort();
        out.dedup();
        for k in &out {
            self.forget(k);
        }
        out
    }

    /// The release is gone (or no policy covers it): forget what was written and checked.
    /// True if a report had been written.
    pub fn forget(&mut self, key: &ReleaseKey) -> bool {
        self.verdicts.remove(key);
        self.written.remove(key).is_some()
    }
}

impl Kept {
    fn token(&self) -> Option<ChangeToken> {
        match self {
            Kept::InSync { token, .. } => Some(*token),
            Kept::Whole(r) => r.change_token,
        }
    }

    /// `namespace/name`.
    fn id(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Kept::InSync { id, .. } => std::borrow::Cow::Borrowed(id),
            Kept::Whole(r) => std::borrow::Cow::Owned(joined(r.namespace.as_deref().unwrap_or(""), &r.name)),
        }
    }

    fn namespace(&self) -> &str {
        match self {
            Kept::InSync { id, .. } => namespace_of(id),
            Kept::Whole(r) => r.namespace.as_deref().unwrap_or(""),
        }
    }

    fn of_kind(&self, no: u16, kinds: &[KindKey]) -> bool {
        match self {
            Kept::InSync { kind, .. } => *kind == no,
            Kept::Whole(r) => kinds.get(no as usize).is_some_and(|k| r.api_version == k.0 && r.kind == k.1),
        }
    }

    fn is(&self, no: u16, kinds: &[KindKey], id: &str) -> bool {
        self.of_kind(no, kinds) && self.id() == id
    }

    /// The whole report again.
    fn report(&self, kinds: &[KindKey]) -> ResourceReport {
        match self {
            Kept::Whole(r) => (**r).clone(),
            Kept::InSync { kind, id, namespaced, token } => {
                let (api_version, kind) = kinds[*kind as usize].clone();
                let (ns, name) = split(id);
                ResourceReport {
                    api_version,
                    kind,
                    namespace: namespaced.then_some(ns),
                    name,
                    state: ObjectState::InSync,
                    fields: Vec::new(),
                    message: None,
                    operations: Vec::new(),
                    seen: None,
                    change_token: Some(*token),
                    transient: false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(driver: Driver, ns: &str, release: &str, rev: u32) -> RecordMeta {
        RecordMeta {
            driver,
            namespace: ns.into(),
            object_name: format!("sh.helm.release.v1.{release}.v{rev}"),
            release: release.into(),
            revision: rev,
            status: ReleaseStatus::Deployed,
            labels: Default::default(),
            created_at: None,
            modified_at: None,
            uid: None,
        }
    }

    /// A token for a test: `t1` and `t2` differ, `t1` and `t1` do not.
    fn tk(s: &str) -> ChangeToken {
        ChangeToken(s.trim_start_matches('t').parse().unwrap())
    }

    fn key(ns: &str, name: &str) -> ReleaseKey {
        (ns.into(), name.into())
    }

    fn deployments() -> KindKey {
        ("apps/v1".into(), "Deployment".into())
    }

    fn verdicts_on(objects: &[(&str, &str, Option<&str>)]) -> Verdicts {
        let resources = objects
            .iter()
            .map(|(ns, name, token)| ResourceReport {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                namespace: Some(ns.to_string()),
                name: name.to_string(),
                state: ObjectState::InSync,
                fields: vec![],
                message: None,
                operations: vec![],
                seen: None,
                change_token: token.map(tk),
                transient: false,
            })
            .collect();
        let mut report = crate::controller::status::tests::report(false);
        report.resources = resources;
        Verdicts { revision: 1, policy: "p@1".into(), report, latest: (1, ReleaseStatus::Deployed) }
    }

    #[test]
    fn verdicts_hold_only_for_the_same_reference_policy_and_newest_revision() {
        let v = verdicts_on(&[]);
        assert!(v.hold_for(1, "p@1", &(1, ReleaseStatus::Deployed)));
        assert!(!v.hold_for(2, "p@1", &(2, ReleaseStatus::Deployed)), "an upgrade moves the reference");
        assert!(!v.hold_for(1, "p@2", &(1, ReleaseStatus::Deployed)), "the policy changed");
        assert!(!v.hold_for(1, "q@1", &(1, ReleaseStatus::Deployed)), "another policy won");
        assert!(!v.hold_for(1, "p@1", &(2, ReleaseStatus::PendingUpgrade)), "a pending revision changes what counts as drift");
    }

    #[test]
    fn the_record_index_follows_its_watches() {
        let mut index = RecordIndex { watches: 2, ..Default::default() };
        assert!(!index.ready());
        index.reset(Driver::Secret, None, vec![record(Driver::Secret, "a", "web", 1), record(Driver::Secret, "b", "web", 1)]);
        index.reset(Driver::ConfigMap, None, vec![record(Driver::ConfigMap, "a", "db", 3)]);
        index.listed = 2;
        assert!(index.ready());
        assert_eq!(index.apply(record(Driver::Secret, "a", "web", 2)), key("a", "web"));
        assert_eq!(index.of_release("a", "web").len(), 2);
        assert_eq!(index.delete(&record(Driver::Secret, "a", "web", 1)), key("a", "web"));
        assert_eq!(index.of_release("a", "web").iter().map(|r| r.revision).collect::<Vec<_>>(), vec![2]);
        // A re-list of one driver in one namespace replaces only that driver's records there.
        index.reset(Driver::Secret, Some("a"), vec![]);
        assert!(index.of_release("a", "web").is_empty());
        assert_eq!(index.of_release("b", "web").len(), 1);
        assert_eq!(index.of_release("a", "db").len(), 1);
        assert_eq!(index.all().len(), 2);
    }

    #[test]
    fn a_relist_names_only_the_releases_whose_records_changed() {
        let mut index = RecordIndex { watches: 2, ..Default::default() };
        let first = vec![record(Driver::Secret, "a", "web", 1), record(Driver::Secret, "a", "db", 1), record(Driver::Secret, "b", "api", 2)];
        let changed = index.reset(Driver::Secret, None, first.clone());
        assert_eq!(changed.len(), 3, "the first listing: everything is new");
        assert!(index.reset(Driver::Secret, None, first.clone()).is_empty(), "the same listing again: nothing to re-check");
        // Meanwhile: web got revision 2, db was uninstalled, a release appeared, api unchanged.
        let mut web2 = record(Driver::Secret, "a", "web", 2);
        web2.status = ReleaseStatus::PendingUpgrade;
        let relist = vec![record(Driver::Secret, "a", "web", 1), web2, record(Driver::Secret, "b", "api", 2), record(Driver::Secret, "c", "new", 1)];
        let mut changed: Vec<ReleaseKey> = index.reset(Driver::Secret, None, relist).into_iter().collect();
        changed.sort();
        assert_eq!(changed, vec![key("a", "db"), key("a", "web"), key("c", "new")]);
        // Another driver's re-list leaves these alone.
        assert!(index.reset(Driver::ConfigMap, None, vec![]).is_empty());
    }

    #[test]
    fn live_tokens_name_the_release_to_recheck_only_when_they_move() {
        let mut index = Index::default();
        let kind = deployments();
        let id = key("shop", "web");
        assert_eq!(index.token("apps/v1", "Deployment", "shop", "web"), None, "not listed yet: vouches for nothing");
        assert!(index.live_listed(&kind, None, vec![(id.clone(), tk("t1"), key("shop", "web"))]).is_empty(), "nothing checked yet");
        assert_eq!(index.token("apps/v1", "Deployment", "shop", "web"), Some(tk("t1")));
        assert_eq!(index.live_applied(&kind, id.clone(), Some((tk("t1"), key("shop", "web")))), None, "a status update: same token");
        assert_eq!(index.live_applied(&kind, id.clone(), Some((tk("t2"), key("shop", "web")))), Some((key("shop", "web"), Some(tk("t1")))));
        // Helm's annotations taken off: forgotten, nothing re-checked by that alone.
        assert_eq!(index.live_applied(&kind, id.clone(), None), None);
        assert_eq!(index.token("apps/v1", "Deployment", "shop", "web"), None);
        index.live_applied(&kind, id.clone(), Some((tk("t3"), key("shop", "web"))));
        // Deleted: the release comes from the annotations, else from the index.
        assert_eq!(index.live_deleted(&kind, &id, None), Some(key("shop", "web")));
        assert_eq!(index.live_deleted(&kind, &id, None), None);
        assert_eq!(index.live_deleted(&kind, &id, Some(key("shop", "web"))), Some(key("shop", "web")));
    }

    #[test]
    fn a_relisted_kind_names_releases_whose_verdicts_are_older_than_the_listing() {
        let mut index = Index::default();
        let kind = deployments();
        index.keep_verdicts(key("a", "same"), verdicts_on(&[("a", "same", Some("t1"))]));
        index.keep_verdicts(key("a", "moved"), verdicts_on(&[("a", "moved", Some("t1"))]));
        index.keep_verdicts(key("a", "gone"), verdicts_on(&[("a", "gone", Some("t1"))]));
        // Missing when checked (no token): its absence in the listing is nothing new.
        index.keep_verdicts(key("a", "missing"), verdicts_on(&[("a", "missing", None)]));
        let listing = vec![(key("a", "same"), tk("t1"), key("a", "same")), (key("a", "moved"), tk("t2"), key("a", "moved"))];
        let mut stale: Vec<ReleaseKey> = index.live_listed(&kind, None, listing).into_iter().collect();
        stale.sort();
        assert_eq!(stale, vec![key("a", "gone"), key("a", "moved")]);
        // The verdicts still valid are those whose every object is at its checked version.
        let same = index.take_verdicts(&key("a", "same")).unwrap();
        assert!(index.still_valid(&same).is_some());
        let moved = index.take_verdicts(&key("a", "moved")).unwrap();
        assert!(index.still_valid(&moved).is_none());
        let missing = index.take_verdicts(&key("a", "missing")).unwrap();
        assert!(index.still_valid(&missing).is_none(), "an object not read is never vouched for");
    }

    #[test]
    fn per_namespace_watches_list_their_own_namespace_only() {
        let mut index = Index::default();
        let kind = deployments();
        index.keep_verdicts(key("a", "web"), verdicts_on(&[("a", "web", Some("t1"))]));
        index.keep_verdicts(key("b", "api"), verdicts_on(&[("b", "api", Some("t1"))]));
        // Namespace a lists: b's object is neither gone nor vouched for.
        let stale = index.live_listed(&kind, Some("a"), vec![(key("a", "web"), tk("t1"), key("a", "web"))]);
        assert!(stale.is_empty(), "{stale:?}");
        assert_eq!(index.token("apps/v1", "Deployment", "a", "web"), Some(tk("t1")));
        assert_eq!(index.token("apps/v1", "Deployment", "b", "api"), None, "b has not listed");
        // b lists without the object: gone, only b's release re-checked; a's objects are kept.
        let stale: Vec<ReleaseKey> = index.live_listed(&kind, Some("b"), vec![]).into_iter().collect();
        assert_eq!(stale, vec![key("b", "api")]);
        assert_eq!(index.token("apps/v1", "Deployment", "a", "web"), Some(tk("t1")));
        // A re-list of a replaces a's objects only.
        index.live_listed(&kind, Some("a"), vec![(key("a", "web"), tk("t2"), key("a", "web"))]);
        assert_eq!(index.token("apps/v1", "Deployment", "a", "web"), Some(tk("t2")));
    }

    #[test]
    fn verdicts_come_back_as_they_were_kept_and_share_what_the_index_holds() {
        let mut index = Index::default();
        let kind = deployments();
        index.live_listed(&kind, None, vec![(key("a", "web"), tk("t1"), key("a", "web")), (key("a", "db"), tk("t1"), key("a", "web"))]);
        let mut v = verdicts_on(&[("a", "web", Some("t1")), ("a", "db", Some("t1")), ("a", "gone", None)]);
        // Drifted, with a first sighting; a cluster-scoped object; an in-sync one with a message.
        v.report.resources[1].state = ObjectState::Modified;
        v.report.resources[1].seen = Some("2026-01-01T00:00:00Z".into());
        let mut cluster_scoped = v.report.resources[0].clone();
        (cluster_scoped.api_version, cluster_scoped.kind, cluster_scoped.namespace, cluster_scoped.name) = ("rbac.authorization.k8s.io/v1".into(), "ClusterRole".into(), None, "web-reader".into());
        v.report.resources.push(cluster_scoped);
        let mut noted = v.report.resources[0].clone();
        (noted.name, noted.message) = ("noted".into(), Some("revision 3 has no such object".into()));
        v.report.resources.push(noted);
        let before = v.clone();
        index.keep_verdicts(key("a", "web"), v);
        // Kept small: the plain in-sync objects by kind, shared id and token; the rest whole.
        let kept = &index.verdicts[&key("a", "web")].resources;
        let plain: Vec<bool> = kept.iter().map(|k| matches!(k, Kept::InSync { .. })).collect();
        assert_eq!(plain, [true, false, false, true, false]);
        let Kept::InSync { id, .. } = &kept[0] else { unreachable!() };
        let (held, _) = index.live[&kind].objects.get_key_value("a/web").unwrap();
        assert!(Arc::ptr_eq(id, held), "the verdict points at the live index's id");
        assert!(index.still_valid(&before).is_none(), "objects not read (gone, not watched): no reuse");
        let back = index.take_verdicts(&key("a", "web")).unwrap();
        assert_eq!(back.report, before.report);
        assert_eq!(back.report.resources.iter().map(|r| r.change_token).collect::<Vec<_>>(), before.report.resources.iter().map(|r| r.change_token).collect::<Vec<_>>());
        assert_eq!((back.revision, back.policy, back.latest), (before.revision, before.policy, before.latest));
    }

    #[test]
    fn a_release_key_is_kept_once_and_forgotten_with_its_last_object() {
        let mut index = Index::default();
        let (kind, cms) = (deployments(), ("v1".to_string(), "ConfigMap".to_string()));
        index.live_listed(&kind, None, vec![(key("a", "web"), tk("t1"), key("a", "web")), (key("a", "db"), tk("t1"), key("a", "db"))]);
        index.live_applied(&cms, key("a", "web-config"), Some((tk("t1"), key("a", "web"))));
        assert_eq!(index.releases.len(), 2, "one copy of each release's key");
        let web = index.releases.get(&key("a", "web")).unwrap().clone();
        let (_, (_, release)) = index.live[&cms].objects.get_key_value("a/web-config").unwrap();
        assert!(Arc::ptr_eq(&web, release));
        drop(web);
        index.live_deleted(&kind, &key("a", "web"), None);
        assert!(index.releases.contains(&key("a", "web")), "its ConfigMap is still live");
        index.live_applied(&cms, key("a", "web-config"), None);
        assert!(!index.releases.contains(&key("a", "web")), "no object left: forgotten");
        assert!(index.stamped_for(&key("a", "web")).is_empty());
        index.live_listed(&kind, None, vec![]);
        assert!(index.releases.is_empty() && index.stamped.is_empty());
    }

    #[test]
    fn helm_objects_are_known_by_their_annotations() {
        let mut meta = ObjectMeta { name: Some("web".into()), namespace: Some("shop".into()), ..Default::default() };
        assert!(helm_object(&deployments(), &meta).is_none());
        meta.annotations = Some([("meta.helm.sh/release-name".to_string(), "web".to_string()), ("meta.helm.sh/release-namespace".to_string(), "shop".to_string())].into());
        let (id, token, release) = helm_object(&deployments(), &meta).unwrap();
        assert_eq!((id, release), (key("shop", "web"), key("shop", "web")));
        assert_eq!(token, crate::check::change_token("apps/v1", "Deployment", &serde_json::to_value(&meta).unwrap()));
        // Every field the token covers, and managed fields it does not: the watch's token is the
        // one the object's JSON (a GET, a listing) gives, for the generation rule and the
        // resourceVersion rule.
        let full: ObjectMeta = serde_json::from_value(serde_json::json!({
            "name": "web", "namespace": "shop", "generation": 3, "resourceVersion": "4711", "uid": "u",
            "labels": {"b": "2", "a": "1"}, "annotations": {"meta.helm.sh/release-name": "web", "meta.helm.sh/release-namespace": "shop"},
            "finalizers": ["x/y"], "deletionTimestamp": "2026-12-02T08:00:00Z",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "1", "controller": true}],
            "managedFields": [{"manager": "helm", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}}}]
        }))
        .unwrap();
        for kind in [deployments(), ("v1".to_string(), "ConfigMap".to_string())] {
            let (_, token, _) = helm_object(&kind, &full).unwrap();
            assert_eq!(token, crate::check::change_token(&kind.0, &kind.1, &serde_json::to_value(&full).unwrap()), "{kind:?}");
        }
        // A hook is never a manifest object: not indexed (not an orphan, not a lost release's).
        meta.annotations.as_mut().unwrap().insert("helm.sh/hook".into(), "pre-upgrade".into());
        assert!(helm_object(&deployments(), &meta).is_none());
    }

    #[test]
    fn the_stamped_objects_of_each_release_follow_listings_writes_and_deletes() {
        let mut index = Index::default();
        let kind = deployments();
        let cms: KindKey = ("v1".into(), "ConfigMap".into());
        index.live_listed(&kind, None, vec![(key("a", "web"), tk("t1"), key("a", "web")), (key("a", "old"), tk("t1"), key("a", "web")), (key("b", "api"), tk("t1"), key("b", "api"))]);
        index.live_applied(&cms, key("a", "web-config"), Some((tk("t1"), key("a", "web"))));
        let web = |index: &Index| index.stamped_for(&key("a", "web")).into_iter().map(|(k, id)| format!("{}/{}", k.1, id.1)).collect::<Vec<_>>();
        assert_eq!(web(&index), ["Deployment/old", "Deployment/web", "ConfigMap/web-config"]);
        // Re-stamped for another release, unstamped, deleted, or gone from a re-list.
        index.live_applied(&cms, key("a", "web-config"), Some((tk("t2"), key("a", "other"))));
        assert_eq!(web(&index), ["Deployment/old", "Deployment/web"]);
        assert_eq!(index.stamped_for(&key("a", "other")).len(), 1);
        index.live_applied(&cms, key("a", "web-config"), None);
        assert!(index.stamped_for(&key("a", "other")).is_empty());
        index.live_deleted(&kind, &key("a", "old"), None);
        assert_eq!(web(&index), ["Deployment/web"]);
        index.live_listed(&kind, Some("a"), vec![]);
        assert!(web(&index).is_empty());
        let mut left = index.stamped_releases();
        left.sort();
        assert_eq!(left, vec![key("b", "api")], "b was not in the re-listed scope");
    }

    #[test]
    fn forgetting_a_release_says_whether_a_report_was_written() {
        let mut index = Index::default();
        let memo = Memo { tally: Tally { policy: "p".into(), drifted: true, unhealthy: false }, status: super::super::status::Written::from_status(&Default::default()), written_at: Instant::now() };
        index.wrote(key("a", "web"), memo.clone(), false);
        let mut other = memo.clone();
        other.tally.drifted = false;
        index.wrote(key("a", "web"), other, true);
        assert!(index.written(&key("a", "web")).unwrap().tally.drifted, "a seeded memo never replaces one already known");
        assert!(index.forget(&key("a", "web")));
        assert!(!index.forget(&key("a", "web")));
    }

    #[test]
    fn a_new_term_reads_the_reports_again() {
        let mut index = Index::default();
        let memo = Memo { tally: Tally { policy: "p".into(), drifted: true, unhealthy: false }, status: super::super::status::Written::from_status(&Default::default()), written_at: Instant::now() };
        index.wrote(key("a", "web"), memo.clone(), false);
        index.wrote(key("b", "api"), memo.clone(), false);
        index.seeded = true;
        index.new_term(|ns| ns == "a");
        assert!(index.written(&key("a", "web")).is_none() && !index.seeded, "another leader may have written since");
        assert!(index.written(&key("b", "api")).is_some(), "a term of one shard keeps what another shard's says");
        let mut theirs = memo;
        theirs.tally.drifted = false;
        index.wrote(key("a", "web"), theirs, true);
        assert!(!index.written(&key("a", "web")).unwrap().tally.drifted, "the report's memo is taken");
        // Its shard moves on: all of it goes, and only it.
        assert_eq!(index.forget_where(|ns| ns == "a"), vec![key("a", "web")]);
        assert!(index.written(&key("a", "web")).is_none() && index.written(&key("b", "api")).is_some());
    }
}
