//! `driftwatch inventory` (issue 17): what is deployed where, across clusters. Pure: the rows
//! each cluster answered (or why it did not) in, the selection, the version skew and the three
//! output formats out. `cluster::inventory` reads a cluster; `main` reads them concurrently.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::cluster::release_store::ListedRelease;
use crate::helm::ReleaseStatus;

/// One release of one cluster, at its newest revision.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    /// The kubeconfig context it was read through.
    pub cluster: String,
    /// What its newest record says (`error`: why it, or with `--drifted` the drift, could not
    /// be read).
    #[serde(flatten)]
    pub release: ListedRelease,
    /// With `--drifted`: whether it has drifted (None: not known, the reason in `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drifted: Option<bool>,
}

/// How a cluster answered.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum State {
    /// It answered (some releases may still be unreadable: their `error` says why).
    Ok,
    /// No answer: the address does not answer, refuses, or times out.
    Unreachable,
    /// It answered, and refused: the context's user may not list release records there.
    Forbidden,
    /// The context is not usable (missing, no credentials) or another error.
    Error,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Unreachable => "unreachable",
            State::Forbidden => "forbidden",
            State::Error => "error",
        }
    }
}

/// How a cluster that refused a LIST answered: 403 is forbidden (the context's user may not
/// list there), any other status is an error with its message, and no status at all (refused,
/// reset, timed out, TLS) is unreachable; a context that cannot make a request is an error.
pub fn state_of(e: &kube::Error) -> State {
    match e {
        kube::Error::Api(s) if s.code == 403 => State::Forbidden,
        kube::Error::Api(_)
        | kube::Error::Auth(_)
        | kube::Error::InferConfig(_)
        | kube::Error::InferKubeconfig(_)
        | kube::Error::BuildRequest(_)
        | kube::Error::SerdeError(_)
        | kube::Error::HttpError(_) => State::Error,
        _ => State::Unreachable,
    }
}

/// The words a person needs from a refusal: the API server's own message, or, when it did not
/// answer, the deepest causes (`tcp connect error: Connection refused (os error 111)`).
pub fn reason_of(e: &kube::Error, server: &str) -> String {
    if let kube::Error::Api(s) = e {
        return s.message.clone();
    }
    let mut causes: Vec<String> = Vec::new();
    let mut next: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        next = err.source();
    }
    let deepest: Vec<String> = causes.into_iter().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect();
    match state_of(e) {
        State::Unreachable => format!("no answer from {server}: {}", deepest.join(": ")),
        _ => deepest.join(": "),
    }
}

/// One cluster's answer.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub context: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Releases found (before the filters).
    pub releases: usize,
    /// API requests it took.
    pub requests: u64,
}

/// The filters; the status ones (`--failed`, `--pending`) select either, the others must all
/// hold.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub failed: bool,
    pub pending: bool,
    /// Last deployed longer ago than this (a release with no time is not stale: unknown).
    pub stale: Option<Duration>,
    /// A glob over the chart name (`*`, `?`).
    pub chart: Option<String>,
    pub drifted: bool,
}

impl Filters {
    pub fn keep(&self, r: &Release, now: Timestamp) -> bool {
        let status_ok = match (self.failed, self.pending) {
            (false, false) => true,
            (failed, pending) => (failed && r.release.status == ReleaseStatus::Failed) || (pending && r.release.status.is_pending()),
        };
        let stale_ok = self.stale.is_none_or(|d| {
            r.release.last_deployed.is_some_and(|t| now.as_second() - t.as_second() > d.as_secs() as i64)
        });
        let chart_ok = self.chart.as_deref().is_none_or(|g| crate::controller::policy::glob(g, &r.release.chart));
        let drift_ok = !self.drifted || r.drifted == Some(true);
        status_ok && stale_ok && chart_ok && drift_ok
    }
}

/// Sorted for reading: cluster, namespace, name.
pub fn sort(releases: &mut [Release]) {
    releases.sort_by(|a, b| (&a.cluster, &a.release.namespace, &a.release.name).cmp(&(&b.cluster, &b.release.namespace, &b.release.name)));
}

/// A chart deployed at more than one version across the chosen clusters.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Skew {
    pub chart: String,
    pub versions: Vec<SkewVersion>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SkewVersion {
    pub version: String,
    pub clusters: Vec<String>,
    /// `cluster/namespace/name`.
    pub releases: Vec<String>,
}

/// The charts at more than one version, each version with its clusters and releases; versions
/// in semver order where they parse, newest first.
pub fn skew(releases: &[Release]) -> Vec<Skew> {
    let mut by_chart: BTreeMap<&str, BTreeMap<&str, Vec<&Release>>> = BTreeMap::new();
    for r in releases.iter().filter(|r| !r.release.chart.is_empty()) {
        by_chart.entry(&r.release.chart).or_default().entry(&r.release.chart_version).or_default().push(r);
    }
    let mut out = Vec::new();
    for (chart, versions) in by_chart {
        if versions.len() < 2 {
            continue;
        }
        let mut versions: Vec<SkewVersion> = versions
            .into_iter()
            .map(|(version, rs)| SkewVersion {
                version: version.to_string(),
                clusters: rs.iter().map(|r| r.cluster.clone()).collect::<BTreeSet<_>>().into_iter().collect(),
                releases: rs.iter().map(|r| format!("{}/{}/{}", r.cluster, r.release.namespace, r.release.name)).collect(),
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(version_key(&v.version)));
        out.push(Skew { chart: chart.to_string(), versions });
    }
    out
}

/// Numeric parts first (1.10.0 after 1.9.0), then the text.
fn version_key(v: &str) -> (Vec<u64>, String) {
    let core = v.trim_start_matches('v').split(['-', '+']).next().unwrap_or_default();
    (core.split('.').map(|p| p.parse().unwrap_or(0)).collect(), v.to_string())
}

/// How long ago, short: `45s`, `12m`, `5h`, `21d`.
fn age(now: Timestamp, t: Option<Timestamp>) -> String {
    t.map(|t| crate::diagnose::ago(now, t)).unwrap_or_else(|| "-".into())
}

/// ANSI colour of a status word (None: plain).
fn colour_of(status: &str) -> Option<&'static str> {
    match status {
        "deployed" | "ok" | "no" => Some("32"),
        "failed" | "unreachable" | "forbidden" | "error" | "yes" | "(unreadable)" => Some("31"),
        s if s.starts_with("pending") || s == "uninstalling" => Some("33"),
        _ => None,
    }
}

/// An aligned table (`kubectl get`'s layout), the `coloured` columns' status words coloured when
/// `colour`.
fn table(headers: &[&str], rows: &[Vec<String>], coloured: &[usize], colour: bool) -> String {
    crate::cli::columns::render_painted(headers, rows, |column, cell| colour_of(cell).filter(|_| colour && coloured.contains(&column)))
}

/// What `inventory` prints, whatever the format.
pub struct Answer<'a> {
    pub clusters: &'a [Cluster],
    /// Selected and sorted.
    pub releases: &'a [Release],
    /// With `--skew`: the charts at more than one version (the releases are not listed then).
    pub skew: Option<&'a [Skew]>,
    /// Whether drift was asked for (`--drifted`): the DRIFTED column.
    pub drift: bool,
    pub now: Timestamp,
}

/// The terminal table: the releases (or the skew), then one line per cluster that did not
/// answer, with its reason.
pub fn render_table(a: &Answer, colour: bool) -> String {
    let mut out = match a.skew {
        Some(skew) => {
            let rows: Vec<Vec<String>> = skew
                .iter()
                .flat_map(|s| s.versions.iter().map(move |v| vec![s.chart.clone(), v.version.clone(), v.clusters.join(","), v.releases.len().to_string(), v.releases.join(" ")]))
                .collect();
            if rows.is_empty() { "No chart is deployed at more than one version.\n".to_string() } else { table(&["CHART", "VERSION", "CLUSTERS", "RELEASES", "WHERE"], &rows, &[], colour) }
        }
        None => {
            let mut headers = vec!["CLUSTER", "NAMESPACE", "NAME", "REVISION", "STATUS", "CHART", "VERSION", "APP VERSION", "DEPLOYED"];
            if a.drift {
                headers.push("DRIFTED");
            }
            let rows: Vec<Vec<String>> = a
                .releases
                .iter()
                .map(|r| {
                    let mut row = vec![
                        r.cluster.clone(),
                        r.release.namespace.clone(),
                        r.release.name.clone(),
                        r.release.revision.to_string(),
                        r.release.status.to_string(),
                        if r.release.chart.is_empty() { "(unreadable)".into() } else { r.release.chart.clone() },
                        r.release.chart_version.clone(),
                        r.release.app_version.clone(),
                        age(a.now, r.release.last_deployed),
                    ];
                    if a.drift {
                        row.push(match r.drifted {
                            Some(true) => "yes".into(),
                            Some(false) => "no".into(),
                            None => "?".into(),
                        });
                    }
                    row
                })
                .collect();
            if rows.is_empty() { "No release matches.\n".to_string() } else { table(&headers, &rows, &[4, 5, 9], colour) }
        }
    };
    let silent: Vec<&Cluster> = a.clusters.iter().filter(|c| c.state != State::Ok).collect();
    if !silent.is_empty() {
        let rows: Vec<Vec<String>> = silent.iter().map(|c| vec![c.context.clone(), c.state.as_str().to_string(), c.reason.clone().unwrap_or_default()]).collect();
        out.push('\n');
        out.push_str(&table(&["CLUSTER", "STATE", "REASON"], &rows, &[1], colour));
    }
    out
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Json<'a> {
    clusters: &'a [Cluster],
    #[serde(skip_serializing_if = "Option::is_none")]
    releases: Option<&'a [Release]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skew: Option<&'a [Skew]>,
}

pub fn render_json(a: &Answer) -> String {
    let doc = Json { clusters: a.clusters, releases: a.skew.is_none().then_some(a.releases), skew: a.skew };
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

/// RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

fn csv_line(fields: &[String]) -> String {
    fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(",") + "\n"
}

/// One line per release (or per chart version with `--skew`); a cluster that did not answer is
/// a line with its state and reason and the release fields empty, so a spreadsheet shows it.
pub fn render_csv(a: &Answer) -> String {
    let mut out = String::new();
    match a.skew {
        Some(skew) => {
            out.push_str("chart,version,clusters,releases\n");
            for s in skew {
                for v in &s.versions {
                    out.push_str(&csv_line(&[s.chart.clone(), v.version.clone(), v.clusters.join(" "), v.releases.join(" ")]));
                }
            }
        }
        None => {
            out.push_str("cluster,state,namespace,name,revision,status,chart,chartVersion,appVersion,lastDeployed,storage,drifted,error\n");
            for r in a.releases {
                out.push_str(&csv_line(&[
                    r.cluster.clone(),
                    "ok".into(),
                    r.release.namespace.clone(),
                    r.release.name.clone(),
                    r.release.revision.to_string(),
                    r.release.status.to_string(),
                    r.release.chart.clone(),
                    r.release.chart_version.clone(),
                    r.release.app_version.clone(),
                    r.release.last_deployed.map(|t| t.to_string()).unwrap_or_default(),
                    r.release.storage.to_string(),
                    r.drifted.map(|d| d.to_string()).unwrap_or_default(),
                    r.release.error.clone().unwrap_or_default(),
                ]));
            }
        }
    }
    // (With --skew the lines are chart versions: the clusters that did not answer go to stderr.)
    if a.skew.is_none() {
        for c in a.clusters.iter().filter(|c| c.state != State::Ok) {
            let mut fields = vec![c.context.clone(), c.state.as_str().to_string()];
            fields.extend(std::iter::repeat_n(String::new(), 10));
            fields.push(c.reason.clone().unwrap_or_default());
            out.push_str(&csv_line(&fields));
        }
    }
    out
}

/// The exit code's question: did any cluster answer?
pub fn any_answered(clusters: &[Cluster]) -> bool {
    clusters.iter().any(|c| c.state == State::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(cluster: &str, ns: &str, name: &str, chart: &str, version: &str, status: ReleaseStatus, days_ago: i64) -> Release {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        Release {
            cluster: cluster.into(),
            release: ListedRelease {
                namespace: ns.into(),
                name: name.into(),
                revision: 1,
                status,
                chart: chart.into(),
                chart_version: version.into(),
                app_version: "1".into(),
                last_deployed: Some(Timestamp::from_second(now.as_second() - days_ago * 86400).unwrap()),
                storage: crate::helm::Driver::Secret,
                error: None,
            },
            drifted: None,
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn fleet() -> Vec<Release> {
        vec![
            release("b", "shop", "web", "podinfo", "6.14.1", ReleaseStatus::Deployed, 1),
            release("a", "shop", "web", "podinfo", "6.9.0", ReleaseStatus::Deployed, 2),
            release("a", "ops", "ksm", "kube-state-metrics", "8.4.0", ReleaseStatus::Failed, 3),
            release("b", "ops", "ksm", "kube-state-metrics", "8.4.0", ReleaseStatus::PendingUpgrade, 0),
            release("a", "old", "legacy", "legacy-app", "0.1.0", ReleaseStatus::Deployed, 45),
        ]
    }

    fn names(rs: &[Release]) -> Vec<String> {
        rs.iter().map(|r| format!("{}/{}/{}", r.cluster, r.release.namespace, r.release.name)).collect()
    }

    fn select(f: &Filters) -> Vec<String> {
        let mut rs: Vec<Release> = fleet().into_iter().filter(|r| f.keep(r, now())).collect();
        sort(&mut rs);
        names(&rs)
    }

    #[test]
    fn how_a_cluster_refused() {
        let status = |code: u16| kube::Error::Api(kube::core::Status::failure("no", "x").with_code(code).boxed());
        assert_eq!(state_of(&status(403)), State::Forbidden);
        assert_eq!(state_of(&status(401)), State::Error);
        assert_eq!(state_of(&status(500)), State::Error);
        let refused: tower::BoxError = Box::new(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"));
        assert_eq!(state_of(&kube::Error::Service(refused)), State::Unreachable);
        let refused: tower::BoxError = Box::new(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"));
        assert_eq!(reason_of(&kube::Error::Service(refused), "https://127.0.0.1:6443/"), "no answer from https://127.0.0.1:6443/: ServiceError: connection refused", "a cause already said is not repeated");
        assert_eq!(reason_of(&status(403), "x"), "no");
    }

    #[test]
    fn filters_select_exactly() {
        assert_eq!(select(&Filters::default()), ["a/old/legacy", "a/ops/ksm", "a/shop/web", "b/ops/ksm", "b/shop/web"]);
        assert_eq!(select(&Filters { failed: true, ..Default::default() }), ["a/ops/ksm"]);
        assert_eq!(select(&Filters { pending: true, ..Default::default() }), ["b/ops/ksm"]);
        assert_eq!(select(&Filters { failed: true, pending: true, ..Default::default() }), ["a/ops/ksm", "b/ops/ksm"], "either status");
        assert_eq!(select(&Filters { stale: Some(Duration::from_secs(720 * 3600)), ..Default::default() }), ["a/old/legacy"]);
        assert_eq!(select(&Filters { chart: Some("kube-*".into()), ..Default::default() }), ["a/ops/ksm", "b/ops/ksm"]);
        assert_eq!(select(&Filters { chart: Some("kube-*".into()), failed: true, ..Default::default() }), ["a/ops/ksm"], "the others must all hold");
        let mut drifted = fleet();
        drifted[0].drifted = Some(true);
        drifted[1].drifted = Some(false);
        let f = Filters { drifted: true, ..Default::default() };
        assert_eq!(names(&drifted.into_iter().filter(|r| f.keep(r, now())).collect::<Vec<_>>()), ["b/shop/web"], "unknown drift is not drift");
        // A release with no deploy time is not called stale.
        let mut unknown = fleet().remove(4);
        unknown.release.last_deployed = None;
        assert!(!Filters { stale: Some(Duration::from_secs(3600)), ..Default::default() }.keep(&unknown, now()));
    }

    #[test]
    fn skew_names_each_version_with_its_clusters_and_releases() {
        let s = skew(&fleet());
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].chart, "podinfo");
        let versions: Vec<(&str, Vec<String>, Vec<String>)> = s[0].versions.iter().map(|v| (v.version.as_str(), v.clusters.clone(), v.releases.clone())).collect();
        assert_eq!(versions, [("6.14.1", vec!["b".to_string()], vec!["b/shop/web".to_string()]), ("6.9.0", vec!["a".to_string()], vec!["a/shop/web".to_string()])], "6.14.1 is newer than 6.9.0");
    }

    #[test]
    fn the_table_is_aligned_and_coloured_only_when_asked() {
        let clusters = [
            Cluster { context: "a".into(), server: None, state: State::Ok, reason: None, releases: 3, requests: 5 },
            Cluster { context: "c".into(), server: None, state: State::Unreachable, reason: Some("connection refused".into()), releases: 0, requests: 1 },
        ];
        let mut rs = fleet();
        sort(&mut rs);
        let a = Answer { clusters: &clusters, releases: &rs, skew: None, drift: false, now: now() };
        let plain = render_table(&a, false);
        assert!(!plain.contains('\x1b'));
        let lines: Vec<&str> = plain.lines().collect();
        assert!(lines[0].starts_with("CLUSTER   NAMESPACE   NAME     REVISION   STATUS"), "{plain}");
        assert!(lines[1].starts_with("a         old         legacy   1          deployed          legacy-app"), "{plain}");
        assert!(lines[1].ends_with("45d"), "{plain}");
        assert!(plain.contains("c         unreachable   connection refused"), "{plain}");
        let coloured = render_table(&a, true);
        assert!(coloured.contains("\x1b[31mfailed\x1b[0m") && coloured.contains("\x1b[32mdeployed\x1b[0m"), "{coloured}");
        // Colour changes no alignment: without the escapes, the same text.
        assert_eq!(coloured.replace("\x1b[31m", "").replace("\x1b[32m", "").replace("\x1b[33m", "").replace("\x1b[0m", ""), plain);
    }

    #[test]
    fn csv_quotes_what_needs_it_and_lists_silent_clusters() {
        let clusters = [Cluster { context: "c".into(), server: None, state: State::Forbidden, reason: Some("secrets is forbidden: User \"x\" cannot list, at the cluster scope".into()), releases: 0, requests: 1 }];
        let mut r = fleet().remove(0);
        r.release.app_version = "1,2".into();
        let rs = [r];
        let a = Answer { clusters: &clusters, releases: &rs, skew: None, drift: false, now: now() };
        let csv = render_csv(&a);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "cluster,state,namespace,name,revision,status,chart,chartVersion,appVersion,lastDeployed,storage,drifted,error");
        assert!(lines[1].starts_with("b,ok,shop,web,1,deployed,podinfo,6.14.1,\"1,2\","), "{csv}");
        assert_eq!(lines[2], "c,forbidden,,,,,,,,,,,\"secrets is forbidden: User \"\"x\"\" cannot list, at the cluster scope\"");
        assert_eq!(lines[2].matches(',').count(), lines[0].matches(',').count() + 1, "the reason's own commas are quoted: {}", lines[2]);
    }

    #[test]
    fn json_has_clusters_and_releases_or_the_skew() {
        let clusters = [Cluster { context: "a".into(), server: Some("https://127.0.0.1:6443".into()), state: State::Ok, reason: None, releases: 5, requests: 7 }];
        let rs = fleet();
        let s = skew(&rs);
        let v: serde_json::Value = serde_json::from_str(&render_json(&Answer { clusters: &clusters, releases: &rs, skew: None, drift: false, now: now() })).unwrap();
        assert_eq!(v["clusters"][0]["state"], "ok");
        assert_eq!(v["releases"][0]["chartVersion"], "6.14.1");
        assert!(v.get("skew").is_none());
        let v: serde_json::Value = serde_json::from_str(&render_json(&Answer { clusters: &clusters, releases: &rs, skew: Some(&s), drift: false, now: now() })).unwrap();
        assert_eq!(v["skew"][0]["versions"][1]["clusters"][0], "a");
        assert!(v.get("releases").is_none());
        assert!(!any_answered(&[]));
        assert!(any_answered(&clusters));
    }
}
