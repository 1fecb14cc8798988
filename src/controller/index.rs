//! What the controller knows, with no client in it: Helm's release records (from the storage
//! watches), the change tokens of the live objects Helm made (from the metadata watches), each
//! release's last verdicts and what was last written for it. Every change that comes in
//! returns the releases to re-check, as data; the watches only carry changes here and those
//! answers to the queue. Tested with no API server.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use kube::api::ObjectMeta;

use crate::helm::{Driver, RecordMeta, ReleaseStatus};
use crate::report::{ReleaseReport, ResourceReport};

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

/// The live objects of one watched kind that Helm made: id → (change token, release), and the
/// scopes whose watch has listed: None (one watch over the whole cluster) or namespaces (one
/// watch per watched namespace). An object vouches for nothing until its scope has listed.
#[derive(Default)]
struct KindIndex {
    listed: HashSet<Option<String>>,
    objects: HashMap<ObjectId, (String, ReleaseKey)>,
}

impl KindIndex {
    fn listed(&self, namespace: &str) -> bool {
        self.listed.contains(&None) || self.listed.contains(&Some(namespace.to_string()))
    }
}

/// An object Helm made, as its metadata watch sees it: its id, change token
/// ([`crate::check::change_token`]) and release (from Helm's annotations). None for an object
/// Helm's annotations do not name, and for a hook (`helm.sh/hook`): never in a manifest.
pub fn helm_object(kind: &KindKey, meta: &ObjectMeta) -> Option<(ObjectId, String, ReleaseKey)> {
    let ann = meta.annotations.as_ref()?;
    if ann.contains_key("helm.sh/hook") {
        return None;
    }
    let release = (ann.get("meta.helm.sh/release-namespace")?.clone(), ann.get("meta.helm.sh/release-name")?.clone());
    let id = (meta.namespace.clone().unwrap_or_default(), meta.name.clone()?);
    let token = crate::check::change_token(&kind.0, &kind.1, &serde_json::to_value(meta).unwrap_or_default());
    Some((id, token, release))
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

/// What was last written for a release (or found written at start-up).
#[derive(Clone, Debug)]
pub struct Memo {
    pub policy: String,
    pub drifted: bool,
    pub unhealthy: bool,
    pub status: super::status::Written,
    pub written_at: Instant,
}

impl Memo {
    /// What an existing report says (after a restart or a leadership change: an unchanged
    /// status is not written again and condition times are kept).
    pub fn of_status(st: &crate::api::DriftReportStatus) -> Memo {
        Memo {
            policy: st.policy.clone().unwrap_or_default(),
            drifted: st.drift.as_deref() == Some("Drifted"),
            unhealthy: st.conditions.iter().any(|c| c.type_ == "ReleaseHealthy" && c.status == "False"),
            status: super::status::Written::from_status(st),
            written_at: Instant::now(),
        }
    }
}

#[derive(Default)]
pub struct Index {
    pub records: RecordIndex,
    live: HashMap<KindKey, KindIndex>,
    verdicts: HashMap<ReleaseKey, Verdicts>,
    written: HashMap<ReleaseKey, Memo>,
    /// The live objects each release's stamps name (the reverse of `live`): for
    /// `OrphanedResources` and `LostRecords`, with no scan.
    stamped: HashMap<ReleaseKey, HashSet<(KindKey, ObjectId)>>,
    /// Whether `written` was seeded from the existing reports (one LIST) since the last start
    /// or leadership change: if so, a release with no memo has no report.
    pub seeded: bool,
}

fn same_object(r: &ResourceReport, kind: &KindKey, id: &ObjectId) -> bool {
    r.api_version == kind.0 && r.kind == kind.1 && r.namespace.as_deref().unwrap_or("") == id.0 && r.name == id.1
}

impl Index {
    // --- live objects -------------------------------------------------------------------

    /// An object's change token, once its kind's watch has listed.
    pub fn token(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<String> {
        self.seen(api_version, kind, namespace, name).flatten()
    }

    /// What the kind's watch has seen of the object: None when it has not listed that
    /// namespace; `Some(None)` when it has and holds no such Helm-made object; else its token.
    pub fn seen(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Option<String>> {
        let k = self.live.get(&(api_version.to_string(), kind.to_string())).filter(|i| i.listed(namespace))?;
        Some(k.objects.get(&(namespace.to_string(), name.to_string())).map(|(t, _)| t.clone()))
    }

    /// A kind's watch over `scope` (None: the whole cluster; a namespace) (re-)listed the
    /// objects Helm made: the releases whose verdict was made against another version of one
    /// of them, or against one in that scope that is gone, are re-checked (an object that
    /// changed between a check's read and this listing has no event of its own).
    pub fn live_listed(&mut self, kind: &KindKey, scope: Option<&str>, listing: Vec<(ObjectId, String, ReleaseKey)>) -> HashSet<ReleaseKey> {
        let in_scope = |ns: &str| scope.is_none_or(|s| s == ns);
        let objects: HashMap<ObjectId, (String, ReleaseKey)> = listing.into_iter().filter(|(id, _, _)| in_scope(&id.0)).map(|(id, t, r)| (id, (t, r))).collect();
        let changed = objects.iter().filter_map(|(id, (token, release))| {
            let r = self.verdicts.get(release)?.report.resources.iter().find(|r| same_object(r, kind, id))?;
            (r.change_token.as_deref() != Some(token.as_str())).then(|| release.clone())
        });
        let gone = self.verdicts.iter().filter_map(|(release, v)| {
            v.report
                .resources
                .iter()
                .any(|r| {
                    let id = (r.namespace.clone().unwrap_or_default(), r.name.clone());
                    r.api_version == kind.0 && r.kind == kind.1 && r.change_token.is_some() && in_scope(&id.0) && !objects.contains_key(&id)
                })
                .then(|| release.clone())
        });
        let stale = changed.chain(gone).collect();
        let entry = self.live.entry(kind.clone()).or_default();
        let dropped: Vec<(ObjectId, ReleaseKey)> = entry.objects.iter().filter(|(id, _)| in_scope(&id.0)).map(|(id, (_, r))| (id.clone(), r.clone())).collect();
        entry.objects.retain(|id, _| !in_scope(&id.0));
        let added: Vec<(ObjectId, ReleaseKey)> = objects.iter().map(|(id, (_, r))| (id.clone(), r.clone())).collect();
        entry.objects.extend(objects);
        entry.listed.insert(scope.map(str::to_string));
        for (id, release) in dropped {
            self.unstamp(kind, id, &release);
        }
        for (id, release) in added {
            self.stamped.entry(release).or_default().insert((kind.clone(), id));
        }
        stale
    }

    /// An object was written. Helm's (`helm` is its [`helm_object`]): its release is re-checked
    /// when its change token moved (a status update changes nothing a manifest says). Not (or no
    /// longer) stamped by Helm: forgotten, no longer vouched for by the index.
    /// Returns the release with the token the index had before (None: none).
    pub fn live_applied(&mut self, kind: &KindKey, id: ObjectId, helm: Option<(String, ReleaseKey)>) -> Option<(ReleaseKey, Option<String>)> {
        let objects = &mut self.live.entry(kind.clone()).or_default().objects;
        match helm {
            Some((token, release)) => {
                let before = objects.insert(id.clone(), (token.clone(), release.clone()));
                if let Some((_, was)) = before.as_ref().filter(|(_, was)| *was != release) {
                    let was = was.clone();
                    self.unstamp(kind, id.clone(), &was);
                }
                self.stamped.entry(release.clone()).or_default().insert((kind.clone(), id));
                let before = before.map(|(t, _)| t);
                (before.as_deref() != Some(token.as_str())).then_some((release, before))
            }
            None => {
                if let Some((_, was)) = objects.remove(&id) {
                    self.unstamp(kind, id, &was);
                }
                None
            }
        }
    }

    /// An object was deleted: its release (from its annotations, else from the index) is
    /// re-checked.
    pub fn live_deleted(&mut self, kind: &KindKey, id: &ObjectId, release: Option<ReleaseKey>) -> Option<ReleaseKey> {
        let known = self.live.get_mut(kind).and_then(|k| k.objects.remove(id)).map(|(_, r)| r);
        if let Some(r) = &known {
            self.unstamp(kind, id.clone(), r);
        }
        release.or(known)
    }

    fn unstamp(&mut self, kind: &KindKey, id: ObjectId, release: &ReleaseKey) {
        if let Some(set) = self.stamped.get_mut(release) {
            set.remove(&(kind.clone(), id));
            if set.is_empty() {
                self.stamped.remove(release);
            }
        }
    }

    /// The live objects (of the watched kinds) whose Helm stamps name a release, sorted.
    pub fn stamped_for(&self, release: &ReleaseKey) -> Vec<(KindKey, ObjectId)> {
        let mut out: Vec<(KindKey, ObjectId)> = self.stamped.get(release).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        out.sort();
        out
    }

    /// Releases named by live objects' stamps (for a start-up pass: those without records are
    /// lost releases).
    pub fn stamped_releases(&self) -> Vec<ReleaseKey> {
        self.stamped.keys().cloned().collect()
    }

    // --- verdicts -----------------------------------------------------------------------

    /// Takes a release's last verdicts (a reconcile puts new ones back when its check ran).
    pub fn take_verdicts(&mut self, key: &ReleaseKey) -> Option<Verdicts> {
        self.verdicts.remove(key)
    }

    pub fn keep_verdicts(&mut self, key: ReleaseKey, v: Verdicts) {
        self.verdicts.insert(key, v);
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

    pub fn all_written(&self) -> impl Iterator<Item = &Memo> + Clone {
        self.written.values()
    }

    /// A report was written (or found at start-up, `keep_earlier`: a memo already there wins).
    pub fn wrote(&mut self, key: ReleaseKey, memo: Memo, keep_earlier: bool) {
        if keep_earlier {
            self.written.entry(key).or_insert(memo);
        } else {
            self.written.insert(key, memo);
        }
    }

    /// This replica became the leader: what it remembers having written may have been
    /// overwritten by the leader before it, so the reports are read again before any is written.
    pub fn new_term(&mut self) {
        self.written.clear();
        self.seeded = false;
    }

    /// The release is gone (or no policy covers it): forget what was written and checked.
    /// True if a report had been written.
    pub fn forget(&mut self, key: &ReleaseKey) -> bool {
        self.verdicts.remove(key);
        self.written.remove(key).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::ObjectState;

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
        }
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
                change_token: token.map(str::to_string),
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
        assert!(index.live_listed(&kind, None, vec![(id.clone(), "t1".into(), key("shop", "web"))]).is_empty(), "nothing checked yet");
        assert_eq!(index.token("apps/v1", "Deployment", "shop", "web").as_deref(), Some("t1"));
        assert_eq!(index.live_applied(&kind, id.clone(), Some(("t1".into(), key("shop", "web")))), None, "a status update: same token");
        assert_eq!(index.live_applied(&kind, id.clone(), Some(("t2".into(), key("shop", "web")))), Some((key("shop", "web"), Some("t1".into()))));
        // Helm's annotations taken off: forgotten, nothing re-checked by that alone.
        assert_eq!(index.live_applied(&kind, id.clone(), None), None);
        assert_eq!(index.token("apps/v1", "Deployment", "shop", "web"), None);
        index.live_applied(&kind, id.clone(), Some(("t3".into(), key("shop", "web"))));
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
        let listing = vec![(key("a", "same"), "t1".into(), key("a", "same")), (key("a", "moved"), "t2".into(), key("a", "moved"))];
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
        let stale = index.live_listed(&kind, Some("a"), vec![(key("a", "web"), "t1".into(), key("a", "web"))]);
        assert!(stale.is_empty(), "{stale:?}");
        assert_eq!(index.token("apps/v1", "Deployment", "a", "web").as_deref(), Some("t1"));
        assert_eq!(index.token("apps/v1", "Deployment", "b", "api"), None, "b has not listed");
        // b lists without the object: gone, only b's release re-checked; a's objects are kept.
        let stale: Vec<ReleaseKey> = index.live_listed(&kind, Some("b"), vec![]).into_iter().collect();
        assert_eq!(stale, vec![key("b", "api")]);
        assert_eq!(index.token("apps/v1", "Deployment", "a", "web").as_deref(), Some("t1"));
        // A re-list of a replaces a's objects only.
        index.live_listed(&kind, Some("a"), vec![(key("a", "web"), "t2".into(), key("a", "web"))]);
        assert_eq!(index.token("apps/v1", "Deployment", "a", "web").as_deref(), Some("t2"));
    }

    #[test]
    fn helm_objects_are_known_by_their_annotations() {
        let mut meta = ObjectMeta { name: Some("web".into()), namespace: Some("shop".into()), ..Default::default() };
        assert!(helm_object(&deployments(), &meta).is_none());
        meta.annotations = Some([("meta.helm.sh/release-name".to_string(), "web".to_string()), ("meta.helm.sh/release-namespace".to_string(), "shop".to_string())].into());
        let (id, token, release) = helm_object(&deployments(), &meta).unwrap();
        assert_eq!((id, release), (key("shop", "web"), key("shop", "web")));
        assert!(!token.is_empty());
        // A hook is never a manifest object: not indexed (not an orphan, not a lost release's).
        meta.annotations.as_mut().unwrap().insert("helm.sh/hook".into(), "pre-upgrade".into());
        assert!(helm_object(&deployments(), &meta).is_none());
    }

    #[test]
    fn the_stamped_objects_of_each_release_follow_listings_writes_and_deletes() {
        let mut index = Index::default();
        let kind = deployments();
        let cms: KindKey = ("v1".into(), "ConfigMap".into());
        index.live_listed(&kind, None, vec![(key("a", "web"), "t1".into(), key("a", "web")), (key("a", "old"), "t1".into(), key("a", "web")), (key("b", "api"), "t1".into(), key("b", "api"))]);
        index.live_applied(&cms, key("a", "web-config"), Some(("t1".into(), key("a", "web"))));
        let web = |index: &Index| index.stamped_for(&key("a", "web")).into_iter().map(|(k, id)| format!("{}/{}", k.1, id.1)).collect::<Vec<_>>();
        assert_eq!(web(&index), ["Deployment/old", "Deployment/web", "ConfigMap/web-config"]);
        // Re-stamped for another release, unstamped, deleted, or gone from a re-list.
        index.live_applied(&cms, key("a", "web-config"), Some(("t2".into(), key("a", "other"))));
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
        let memo = Memo { policy: "p".into(), drifted: true, unhealthy: false, status: super::super::status::Written { comparable: [0; 32], full: serde_json::json!({}) }, written_at: Instant::now() };
        index.wrote(key("a", "web"), memo.clone(), false);
        let mut other = memo.clone();
        other.drifted = false;
        index.wrote(key("a", "web"), other, true);
        assert!(index.written(&key("a", "web")).unwrap().drifted, "a seeded memo never replaces one already known");
        assert!(index.forget(&key("a", "web")));
        assert!(!index.forget(&key("a", "web")));
    }

    #[test]
    fn a_new_term_reads_the_reports_again() {
        let mut index = Index::default();
        let memo = Memo { policy: "p".into(), drifted: true, unhealthy: false, status: super::super::status::Written { comparable: [0; 32], full: serde_json::json!({}) }, written_at: Instant::now() };
        index.wrote(key("a", "web"), memo.clone(), false);
        index.seeded = true;
        index.new_term();
        assert!(index.written(&key("a", "web")).is_none() && !index.seeded, "another leader may have written since");
        let mut theirs = memo;
        theirs.drifted = false;
        index.wrote(key("a", "web"), theirs, true);
        assert!(!index.written(&key("a", "web")).unwrap().drifted, "the report's memo is taken");
    }
}
