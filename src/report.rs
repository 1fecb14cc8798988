//! What a drift check reports, for one release and each of its objects: the data the CLI
//! prints, the controller writes into DriftReports and the metrics count. Pure types, at the
//! bottom of the crate: they import nothing from the check, the cluster or the runtime.

use serde::{Deserialize, Serialize};

use crate::drift::{FieldDrift, ObjectState, Operation};
use crate::helm::ReleaseStatus;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceReport {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub state: ObjectState,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldDrift>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Operational actions seen on the object (not drift unless the policy counts them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<Operation>,
    /// When the controller first saw this object out of sync (RFC 3339); kept across
    /// re-checks and restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<String>,
    /// The version of the live object this verdict was made from ([`crate::check::change_token`]; None:
    /// absent or unread).
    #[serde(skip)]
    pub change_token: Option<ChangeToken>,
    /// The object could not be checked for a reason that may pass (the API server did not
    /// answer): worth checking again soon.
    #[serde(skip)]
    pub transient: bool,
}

/// A version of a live object as far as drift goes ([`crate::check::change_token`]): a 64-bit
/// digest, small because the controller keeps one per live object and one per verdict (memory,
/// issue 18). Never written anywhere: it lives and dies with the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChangeToken(pub u64);

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub resources: usize,
    pub in_sync: usize,
    pub modified: usize,
    pub missing: usize,
    pub added: usize,
    pub errors: usize,
    /// Operational actions seen (rollout restarts, client-side applies), not counted as drift.
    #[serde(default)]
    pub operations: usize,
}

/// An operational action on one object of the release.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectOperation {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(flatten)]
    pub operation: Operation,
}

/// The DriftPolicy that covers a release, as `check` knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyNote {
    /// `namespace/name`.
    pub name: String,
    /// Whether its ignore rules and managers were applied (`check --policy`).
    pub applied: bool,
}

/// A release-level finding (PRODUCT.md section 1): `Failed`, `PartialUpgrade`, `StuckPending`,
/// `HookOrphans`, `OrphanedResources`, `LostRecords`, `Stale`. Made by
/// [`crate::diagnose::findings`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Finding {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    /// What to do about it: a command filled in with the release's names.
    pub hint: String,
    /// The objects it is about (per object, which revision it matches for `PartialUpgrade`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<FindingResource>,
    /// The failure's diagnosis (`Failed`, `StuckPending`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Diagnosis>,
}

/// One object a finding is about.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct FindingResource {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// `PartialUpgrade`: the revision the live object matches (`failed`, `reference`,
    /// `neither`, `missing`); `HookOrphans`: the hook's state (`failed`, `running`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl FindingResource {
    /// `Kind/name` (`Kind ns/name` is too long for a condition message).
    pub fn short(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// Why a release failed or is stuck, classified from gathered evidence
/// ([`crate::diagnose::classify`]): the cause, the evidence lines it used, the next commands.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Diagnosis {
    /// `HookFailed`, `HookTimeout`, `ResourceAlreadyExists`, `ImagePull`, `CrashLoop`,
    /// `Unschedulable`, `QuotaExceeded`, `AdmissionDenied`, `Timeout`, `Unknown`.
    pub cause: String,
    /// One sentence: the cause with the names it is about.
    pub summary: String,
    pub evidence: Vec<String>,
    /// The commands to run next, in order, with the real names.
    pub next: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseReport {
    pub name: String,
    pub namespace: String,
    pub revision: u32,
    pub chart: String,
    pub chart_version: String,
    pub app_version: String,
    pub status: ReleaseStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_deployed: Option<jiff::Timestamp>,
    pub apply_method: crate::helm::ApplyMethod,
    pub drifted: bool,
    pub summary: Summary,
    pub resources: Vec<ResourceReport>,
    pub findings: Vec<Finding>,
    /// The policy that covers the release, when `check` knows one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyNote>,
    /// The check could not run at all (no readable revision); `resources` is then empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What kind of failure `error` is, for metrics and retries (never read from the text).
    #[serde(skip)]
    pub error_kind: Option<CheckErrorKind>,
    /// Fields the local comparison flagged that the server's dry-run showed to be equal
    /// (normalisation gaps, not drift).
    #[serde(skip)]
    pub confirmed_away: usize,
    /// Part of the check failed for a reason that may pass (a read the API server did not
    /// answer): the controller checks the release again after a backoff.
    #[serde(skip)]
    pub transient: bool,
}

pub fn summarize(resources: &[ResourceReport]) -> Summary {
    let mut s = Summary { resources: resources.len(), ..Summary::default() };
    for r in resources {
        match r.state {
            ObjectState::InSync => s.in_sync += 1,
            ObjectState::Modified => s.modified += 1,
            ObjectState::Missing => s.missing += 1,
            ObjectState::Added => s.added += 1,
            ObjectState::Error => s.errors += 1,
        }
        s.operations += r.operations.len();
    }
    s
}

impl ReleaseReport {
    /// A report with nothing checked yet.
    pub fn new(name: &str, namespace: &str, revision: u32, status: ReleaseStatus) -> Self {
        ReleaseReport {
            name: name.to_string(),
            namespace: namespace.to_string(),
            revision,
            chart: String::new(),
            chart_version: String::new(),
            app_version: String::new(),
            status,
            last_deployed: None,
            apply_method: Default::default(),
            drifted: false,
            summary: Summary::default(),
            resources: Vec::new(),
            findings: Vec::new(),
            policy: None,
            error: None,
            error_kind: None,
            confirmed_away: 0,
            transient: false,
        }
    }

    /// Every operational action seen, with the object it was seen on.
    pub fn operations(&self) -> Vec<ObjectOperation> {
        self.resources
            .iter()
            .flat_map(|r| {
                r.operations.iter().map(|op| ObjectOperation {
                    api_version: r.api_version.clone(),
                    kind: r.kind.clone(),
                    namespace: r.namespace.clone(),
                    name: r.name.clone(),
                    operation: op.clone(),
                })
            })
            .collect()
    }
}


/// Why a release could not be checked at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckErrorKind {
    /// No revision is `deployed` (or the asked one does not exist): nothing to compare against.
    NoReference,
    /// The record is there but its payload cannot be decoded (corrupt, truncated, not Helm's).
    Decode,
    /// The record could not be read (the API server did not answer, or refused).
    Read,
    /// The release has no record left, but live objects are stamped for it (`LostRecords`).
    NoRecords,
}

impl CheckErrorKind {
    /// The reason of the report's `Ready=False` and `Drifted=Unknown` conditions and of the
    /// Warning Event when a release turns uncheckable.
    pub fn reason(self) -> &'static str {
        match self {
            CheckErrorKind::NoReference => "NoDeployedRevision",
            CheckErrorKind::Decode => "RecordCorrupt",
            CheckErrorKind::Read => "RecordUnreadable",
            CheckErrorKind::NoRecords => "RecordsLost",
        }
    }

    /// The `result` label of `driftwatch_checks_total`.
    pub fn result(self) -> &'static str {
        match self {
            CheckErrorKind::NoReference => "no_reference",
            CheckErrorKind::Decode => "decode_error",
            CheckErrorKind::Read => "read_error",
            CheckErrorKind::NoRecords => "no_records",
        }
    }
}

impl ReleaseReport {
    /// The `result` label of `driftwatch_checks_total` for this check: `in_sync`, `drifted`,
    /// or why it could not run.
    pub fn result(&self) -> &'static str {
        match (self.error_kind, self.error.is_some(), self.drifted) {
            (Some(kind), _, _) => kind.result(),
            (None, true, _) => "error",
            (None, false, true) => "drifted",
            (None, false, false) => "in_sync",
        }
    }
}
