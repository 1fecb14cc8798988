//! Release records as Helm's storage drivers lay them out, known from metadata alone: a
//! Secret (type `helm.sh/release.v1`) or ConfigMap named `sh.helm.release.v1.<name>.v<rev>`
//! with labels `owner=helm`, `name`, `status`, `version`. No payload is needed to know a
//! release's revisions and their statuses.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use super::release::ReleaseStatus;

/// The Secret type Helm's secret driver writes.
pub const SECRET_TYPE: &str = "helm.sh/release.v1";
/// The label selector of Helm's storage (both drivers).
pub const OWNER_SELECTOR: &str = "owner=helm";
/// Labels Helm's drivers set themselves; any other label on a record came from `helm --labels`.
const SYSTEM_LABELS: [&str; 6] = ["name", "owner", "status", "version", "createdAt", "modifiedAt"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Secret,
    ConfigMap,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Secret => "secret",
            Driver::ConfigMap => "configmap",
        })
    }
}

/// One release record, from its object's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    pub driver: Driver,
    pub namespace: String,
    /// The storage object's name (`sh.helm.release.v1.<name>.v<rev>`).
    pub object_name: String,
    pub release: String,
    pub revision: u32,
    pub status: ReleaseStatus,
    /// Labels given with `helm --labels` (Helm keeps them on the record, not in the payload).
    pub labels: BTreeMap<String, String>,
    /// `createdAt` / `modifiedAt` labels (unix seconds), when present.
    pub created_at: Option<i64>,
    pub modified_at: Option<i64>,
    /// The storage object's uid: a record deleted and written again under its name (an
    /// uninstall, then an install) is another record.
    pub uid: Option<String>,
}

/// Why an object that looks like Helm storage is not a usable record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordMetaError {
    #[error("{object}: not a Helm release record ({reason})")]
    NotARecord { object: String, reason: String },
}

impl RecordMeta {
    /// Reads a record's identity from its object's metadata. `secret_type` is the Secret's
    /// `type` (None for ConfigMaps). Errors name the object and what is off.
    pub fn from_metadata(driver: Driver, meta: &ObjectMeta, secret_type: Option<&str>) -> Result<Self, RecordMetaError> {
        let namespace = meta.namespace.clone().unwrap_or_default();
        let object_name = meta.name.clone().unwrap_or_default();
        let object = format!("{driver} {namespace}/{object_name}");
        let bad = |reason: String| RecordMetaError::NotARecord { object: object.clone(), reason };
        if driver == Driver::Secret && secret_type.is_some_and(|t| t != SECRET_TYPE) {
            return Err(bad(format!("type is {:?}, not {SECRET_TYPE:?}", secret_type.unwrap_or(""))));
        }
        let labels = meta.labels.clone().unwrap_or_default();
        if labels.get("owner").map(String::as_str) != Some("helm") {
            return Err(bad("no owner=helm label".into()));
        }
        let release = labels.get("name").filter(|n| !n.is_empty()).cloned();
        let version = labels.get("version").and_then(|v| v.parse::<u32>().ok());
        // Fall back to the object name when a label is missing: Helm's Get goes by name.
        let from_name = parse_record_name(&object_name);
        let (release, revision) = match (release, version, from_name) {
            (Some(r), Some(v), _) => (r, v),
            (r, v, Some((nr, nv))) => (r.unwrap_or(nr), v.unwrap_or(nv)),
            _ => return Err(bad("no name/version labels and the name is not sh.helm.release.v1.<name>.v<revision>".into())),
        };
        let status = ReleaseStatus::parse(labels.get("status").map(String::as_str).unwrap_or(""));
        let stamp = |k: &str| labels.get(k).and_then(|v| v.parse::<i64>().ok());
        Ok(RecordMeta {
            driver,
            namespace,
            object_name,
            release,
            revision,
            status,
            created_at: stamp("createdAt"),
            modified_at: stamp("modifiedAt"),
            uid: meta.uid.clone(),
            labels: labels
                .iter()
                .filter(|(k, _)| !SYSTEM_LABELS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

impl RecordMeta {
    /// When the record got its status (unix seconds): the later of its `createdAt` and
    /// `modifiedAt` labels (Helm copies an older `modifiedAt` onto a new pending record).
    pub fn since(&self) -> Option<i64> {
        self.created_at.max(self.modified_at)
    }
}

/// `sh.helm.release.v1.<name>.v<rev>` → (name, rev).
pub fn parse_record_name(object_name: &str) -> Option<(String, u32)> {
    let rest = object_name.strip_prefix("sh.helm.release.v1.")?;
    let (name, rev) = rest.rsplit_once(".v")?;
    let rev = rev.parse().ok()?;
    (!name.is_empty()).then(|| (name.to_string(), rev))
}

/// Every revision of one release, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseHistory {
    pub namespace: String,
    pub name: String,
    pub driver: Driver,
    pub revisions: Vec<RecordMeta>,
}

impl ReleaseHistory {
    /// The newest revision, whatever its status.
    pub fn latest(&self) -> &RecordMeta {
        self.revisions.last().expect("a history has at least one revision")
    }

    /// The reference revision of a drift check: the newest one whose status is `deployed`.
    pub fn reference(&self) -> Option<&RecordMeta> {
        self.revisions.iter().rev().find(|r| r.status == ReleaseStatus::Deployed)
    }

    pub fn revision(&self, revision: u32) -> Option<&RecordMeta> {
        self.revisions.iter().find(|r| r.revision == revision)
    }

    /// While Helm holds the release's lock (the newest revision is `pending-*` and newer than
    /// `reference`), the revisions the objects are moving between, newest first: the pending
    /// one, then those Helm applied after the reference and that failed (an atomic upgrade's
    /// rollback starts from the failed upgrade's objects), at most [`MAX_IN_TRANSIT`] of them.
    /// Empty when no operation is under way.
    pub fn in_transit(&self, reference: u32) -> Vec<&RecordMeta> {
        let latest = self.latest();
        if !latest.status.is_pending() || latest.revision <= reference {
            return Vec::new();
        }
        self.revisions.iter().rev().take_while(|r| r.revision > reference).take(MAX_IN_TRANSIT).collect()
    }
}

/// How many revisions newer than the reference a pending operation's check reads at most (the
/// pending one and the failed ones before it; each is a record to decode).
pub const MAX_IN_TRANSIT: usize = 3;

/// Groups records into releases by (namespace, name, driver); revisions sorted oldest first,
/// releases sorted by namespace then name.
pub fn group_releases(records: impl IntoIterator<Item = RecordMeta>) -> Vec<ReleaseHistory> {
    let mut groups: BTreeMap<(String, String, Driver), Vec<RecordMeta>> = BTreeMap::new();
    for r in records {
        groups.entry((r.namespace.clone(), r.release.clone(), r.driver)).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((namespace, name, driver), mut revisions)| {
            revisions.sort_by_key(|r| r.revision);
            ReleaseHistory { namespace, name, driver, revisions }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("prod".into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        }
    }

    fn record(name: &str, rev: u32, status: &str) -> RecordMeta {
        let obj = format!("sh.helm.release.v1.{name}.v{rev}");
        let rev = rev.to_string();
        RecordMeta::from_metadata(
            Driver::Secret,
            &meta(&obj, &[("owner", "helm"), ("name", name), ("version", &rev), ("status", status)]),
            Some(SECRET_TYPE),
        )
        .unwrap()
    }

    #[test]
    fn record_names() {
        assert_eq!(parse_record_name("sh.helm.release.v1.shop.v12"), Some(("shop".into(), 12)));
        assert_eq!(parse_record_name("sh.helm.release.v1.my.app.v1"), Some(("my.app".into(), 1)));
        assert_eq!(parse_record_name("sh.helm.release.v1.v2.v3"), Some(("v2".into(), 3)));
        assert_eq!(parse_record_name("sh.helm.release.v1..v1"), None);
        assert_eq!(parse_record_name("sh.helm.release.v1.shop.vx"), None);
        assert_eq!(parse_record_name("other"), None);
    }

    #[test]
    fn record_from_labels() {
        let r = RecordMeta::from_metadata(
            Driver::Secret,
            &meta(
                "sh.helm.release.v1.shop.v2",
                &[
                    ("owner", "helm"),
                    ("name", "shop"),
                    ("version", "2"),
                    ("status", "failed"),
                    ("createdAt", "1763900000"),
                    ("team", "core"),
                ],
            ),
            Some(SECRET_TYPE),
        )
        .unwrap();
        assert_eq!((r.release.as_str(), r.revision), ("shop", 2));
        assert_eq!(r.status, ReleaseStatus::Failed);
        assert_eq!(r.created_at, Some(1763900000));
        assert_eq!(r.labels, BTreeMap::from([("team".to_string(), "core".to_string())]));
    }

    #[test]
    fn missing_labels_fall_back_to_the_name() {
        let r = RecordMeta::from_metadata(Driver::ConfigMap, &meta("sh.helm.release.v1.blog.v7", &[("owner", "helm")]), None)
            .unwrap();
        assert_eq!((r.release.as_str(), r.revision, &r.status), ("blog", 7, &ReleaseStatus::Unknown));
    }

    #[test]
    fn not_records() {
        let wrong_type = RecordMeta::from_metadata(
            Driver::Secret,
            &meta("sh.helm.release.v1.a.v1", &[("owner", "helm")]),
            Some("Opaque"),
        );
        assert!(wrong_type.unwrap_err().to_string().contains("type is \"Opaque\""));
        let no_owner = RecordMeta::from_metadata(Driver::Secret, &meta("sh.helm.release.v1.a.v1", &[]), Some(SECRET_TYPE));
        assert!(no_owner.unwrap_err().to_string().contains("no owner=helm"));
        let no_identity = RecordMeta::from_metadata(Driver::Secret, &meta("foo", &[("owner", "helm")]), Some(SECRET_TYPE));
        assert!(no_identity.unwrap_err().to_string().starts_with("secret prod/foo: not a Helm release record"));
    }

    #[test]
    fn grouping_and_reference_revision() {
        let h = group_releases([
            record("shop", 3, "failed"),
            record("blog", 1, "deployed"),
            record("shop", 1, "superseded"),
            record("shop", 2, "deployed"),
        ]);
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].name, "blog");
        let shop = &h[1];
        assert_eq!(shop.revisions.iter().map(|r| r.revision).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(shop.latest().revision, 3);
        assert_eq!(shop.reference().unwrap().revision, 2);
        assert_eq!(shop.revision(1).unwrap().status, ReleaseStatus::Superseded);
    }

    #[test]
    fn revisions_in_transit() {
        let revs = |h: &[ReleaseHistory], reference: u32| h[0].in_transit(reference).iter().map(|r| r.revision).collect::<Vec<_>>();
        // No operation under way.
        let h = group_releases([record("a", 1, "superseded"), record("a", 2, "deployed")]);
        assert_eq!(revs(&h, 2), Vec::<u32>::new());
        let h = group_releases([record("a", 1, "deployed"), record("a", 2, "failed")]);
        assert_eq!(revs(&h, 1), Vec::<u32>::new());
        // An upgrade: from the reference to the pending revision.
        let h = group_releases([record("a", 1, "deployed"), record("a", 2, "pending-upgrade")]);
        assert_eq!(revs(&h, 1), [2]);
        // An atomic upgrade's rollback starts from the failed upgrade.
        let h = group_releases([record("a", 1, "deployed"), record("a", 2, "failed"), record("a", 3, "pending-rollback")]);
        assert_eq!(revs(&h, 1), [3, 2]);
        // Many failures: the newest few only.
        let h = group_releases((2..=7).map(|n| record("a", n, "failed")).chain([record("a", 1, "deployed"), record("a", 8, "pending-upgrade")]));
        assert_eq!(revs(&h, 1), [8, 7, 6]);
        // A pending install has no reference; a pending revision older than it is not in flight.
        let h = group_releases([record("a", 1, "pending-install")]);
        assert_eq!(revs(&h, 0), [1]);
        let h = group_releases([record("a", 1, "pending-upgrade"), record("a", 2, "deployed")]);
        assert_eq!(revs(&h, 2), Vec::<u32>::new());
    }

    #[test]
    fn no_reference_without_a_deployed_revision() {
        let h = group_releases([record("a", 1, "failed"), record("a", 2, "pending-upgrade")]);
        assert!(h[0].reference().is_none());
    }
}
