//! The custom resources `DriftPolicy` and `DriftReport` (group `driftwatch.io`, `v1alpha1`).
//! PRODUCT.md section 2 is the contract.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::drift::IgnoreRule;
use crate::report::{Finding, ObjectOperation, ResourceReport, Summary};

pub const GROUP: &str = "driftwatch.io";

/// Which releases a policy covers, and how it treats them.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "driftwatch.io",
    version = "v1alpha1",
    kind = "DriftPolicy",
    namespaced,
    status = "DriftPolicyStatus",
    shortname = "dp",
    doc = "Which Helm releases Driftwatch checks, how often, what it ignores, and whether it heals",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Matched", type_ = "integer", json_path = ".status.matchedReleases"),
    printcolumn(name = "Drifted", type_ = "integer", json_path = ".status.driftedReleases"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct DriftPolicySpec {
    #[serde(default)]
    pub release_selector: ReleaseSelector,
    #[serde(default)]
    pub mode: Mode,
    /// Full re-check period (Go duration, e.g. 5m). Changes are also seen as they happen.
    #[serde(default = "default_interval")]
    pub interval: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<IgnoreRule>,
    /// Fields owned by these field managers are never drift.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_managers: Vec<String>,
    /// Count operational actions as drift: `kubectl rollout restart`'s
    /// `kubectl.kubernetes.io/restartedAt` and client-side apply's
    /// `kubectl.kubernetes.io/last-applied-configuration`. Off: they are listed apart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub operations_as_drift: bool,
    #[serde(default)]
    pub heal: HealSpec,
    #[serde(default)]
    pub health: HealthSpec,
}

/// The policy interval when the spec has none (the CRD's default says the same).
pub const DEFAULT_INTERVAL: &str = "5m";

fn default_interval() -> String {
    DEFAULT_INTERVAL.into()
}

impl Default for DriftPolicySpec {
    /// An empty spec, as the API server defaults it: the serde defaults are the only ones.
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("an empty spec takes every default")
    }
}

impl DriftPolicySpec {
    /// The full re-check period. A policy whose interval does not parse is invalid and used by
    /// nobody; should one be asked anyway, it is the default.
    pub fn interval(&self) -> Duration {
        parse_duration(&self.interval).unwrap_or_else(|_| parse_duration(DEFAULT_INTERVAL).expect("the default parses"))
    }

    /// The grace before healing (`heal.after`); zero when it does not parse (an invalid policy).
    pub fn heal_after(&self) -> Duration {
        parse_duration(&self.heal.after).unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Detect,
    Heal,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseSelector {
    /// Honoured only for policies in a cluster-policy namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Honoured only for policies in a cluster-policy namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Release-name globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Chart-name globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charts: Vec<String>,
    /// Labels on the release record (`helm --labels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealSpec {
    #[serde(default = "zero")]
    pub after: String,
    #[serde(default = "ten")]
    pub max_per_hour: u32,
    #[serde(default)]
    pub remove_added: bool,
    #[serde(default = "yes")]
    pub recreate_missing: bool,
}

impl Default for HealSpec {
    fn default() -> Self {
        HealSpec { after: zero(), max_per_hour: ten(), remove_added: false, recreate_missing: true }
    }
}

fn zero() -> String {
    "0s".into()
}
fn ten() -> u32 {
    10
}
fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthSpec {
    #[serde(default = "fifteen_minutes")]
    pub pending_timeout: String,
    #[serde(default = "thirty_days")]
    pub stale_after: String,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec { pending_timeout: fifteen_minutes(), stale_after: thirty_days() }
    }
}

fn fifteen_minutes() -> String {
    "15m".into()
}
fn thirty_days() -> String {
    "720h".into()
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriftPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub matched_releases: u32,
    #[serde(default)]
    pub drifted_releases: u32,
    #[serde(default)]
    pub unhealthy_releases: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scan_time: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One release's drift, written by the controller only.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "driftwatch.io",
    version = "v1alpha1",
    kind = "DriftReport",
    namespaced,
    status = "DriftReportStatus",
    shortname = "dr",
    doc = "Drift of one Helm release (same name and namespace as the release); written by Driftwatch",
    printcolumn(name = "Revision", type_ = "integer", json_path = ".status.release.revision"),
    printcolumn(name = "Chart", type_ = "string", json_path = ".status.release.chartRef"),
    printcolumn(name = "Release", type_ = "string", json_path = ".status.release.status"),
    printcolumn(name = "Drift", type_ = "string", json_path = ".status.drift"),
    printcolumn(name = "Resources", type_ = "string", json_path = ".status.driftedResources"),
    printcolumn(name = "Last Check", type_ = "date", json_path = ".status.lastCheckTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
pub struct DriftReportSpec {}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriftReportStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseInfo>,
    /// The policy that covers the release (`namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// `Drifted`, `InSync`, or `Unknown` when the check could not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
    /// Drifted of all resources, e.g. `2/14`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drifted_resources: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub summary: Option<Summary>,
    /// Only the resources that are not InSync, capped; see `truncated`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "any_list")]
    pub resources: Vec<ResourceReport>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Operational actions seen (rollout restarts, client-side applies): not drift unless the
    /// policy's `operationsAsDrift` says so. Capped like `resources`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "any_list")]
    pub operations: Vec<ObjectOperation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "any_list")]
    pub findings: Vec<Finding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_drift_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<String>,
    #[serde(default)]
    pub heals: u32,
    /// The latest heal: `{time, result, resources}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub last_heal: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseInfo {
    pub name: String,
    pub namespace: String,
    pub revision: u32,
    pub chart: String,
    pub chart_version: String,
    /// `chart-version`, as `helm list` shows it.
    pub chart_ref: String,
    pub app_version: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_deployed: Option<String>,
    pub apply_method: String,
}

fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

fn any_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}})
}

/// A Go-style duration (`90s`, `5m`, `1h30m`, `720h`, `0s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (examples: 30s, 5m, 1h30m, 720h)");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (mut total, mut rest) = (0f64, s);
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * secs;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// The CRDs as YAML, as `driftwatch crdgen` prints them and `crds/` holds them.
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt as _;
    let mut out = String::new();
    let mut report = DriftReport::crd();
    // A report has no status subresource: it is the controller's output, written whole, so a
    // new report is one request (with the subresource it is two: the object, then its status;
    // docs/SCALING.md). Users only read it. Its conditions carry no observedGeneration, so the
    // generation each write bumps means nothing to them.
    for v in &mut report.spec.versions {
        v.subresources = None;
    }
    for crd in [DriftPolicy::crd(), report] {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).expect("CRDs serialise"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s| parse_duration(s).unwrap().as_secs_f64();
        assert_eq!(d("0s"), 0.0);
        assert_eq!(d("0"), 0.0);
        assert_eq!(d("90s"), 90.0);
        assert_eq!(d("5m"), 300.0);
        assert_eq!(d("1h30m"), 5400.0);
        assert_eq!(d("720h"), 2_592_000.0);
        assert_eq!(d("1.5h"), 5400.0);
        assert_eq!(d("250ms"), 0.25);
        for bad in ["", "5", "m", "5 m", "5d", "-5m", "1h30"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn policy_defaults() {
        let p: DriftPolicySpec = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(p.mode, Mode::Detect);
        assert_eq!(p.interval, "5m");
        assert_eq!(p.interval(), Duration::from_secs(300));
        assert_eq!(p.heal_after(), Duration::ZERO);
        let bad: DriftPolicySpec = serde_json::from_value(serde_json::json!({"interval": "soon", "heal": {"after": "later"}})).unwrap();
        assert_eq!((bad.interval(), bad.heal_after()), (Duration::from_secs(300), Duration::ZERO));
        assert_eq!(p.heal, HealSpec::default());
        assert_eq!(p.health.stale_after, "720h");
    }

    #[test]
    fn committed_crds_are_crdgen_output() {
        let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/driftwatch.io.yaml"))
            .expect("crds/driftwatch.io.yaml exists (run: driftwatch crdgen > crds/driftwatch.io.yaml)");
        assert!(committed == crds_yaml(), "crds/driftwatch.io.yaml is stale: run `cargo run -- crdgen > crds/driftwatch.io.yaml`");
    }
}
