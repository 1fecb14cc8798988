//! `driftwatch check --list`: the releases Helm's storage holds, read by our own decoder —
//! the view `helm list -A --all` gives, one row per release at its newest revision.

use jiff::Timestamp;
use serde::Serialize;

use crate::cluster::ReleaseStore;
use crate::cluster::release_store::Listing;
use crate::helm::{Driver, ReleaseStatus, group_releases};

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListedRelease {
    pub name: String,
    pub namespace: String,
    pub revision: u32,
    pub status: ReleaseStatus,
    pub chart: String,
    pub chart_version: String,
    pub app_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_deployed: Option<Timestamp>,
    pub storage: Driver,
    /// Set when the newest record could not be read; the other fields then come from labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `--list` found, plus what it could not read (each said once, plainly).
#[derive(Debug, Default)]
pub struct ReleaseList {
    pub releases: Vec<ListedRelease>,
    pub problems: Vec<String>,
    /// No storage could be listed at all (every driver failed).
    pub nothing_readable: bool,
}

pub async fn list_releases(store: &ReleaseStore, namespace: Option<&str>) -> ReleaseList {
    let Listing { records, malformed, errors } = store.list(namespace).await;
    let mut out = ReleaseList {
        nothing_readable: errors.len() == 2,
        problems: errors.iter().map(ToString::to_string).collect(),
        ..Default::default()
    };
    out.problems.extend(malformed.iter().map(ToString::to_string));
    for history in group_releases(records) {
        let latest = history.latest();
        let mut row = ListedRelease {
            name: history.name.clone(),
            namespace: history.namespace.clone(),
            revision: latest.revision,
            status: latest.status.clone(),
            chart: String::new(),
            chart_version: String::new(),
            app_version: String::new(),
            last_deployed: None,
            storage: history.driver,
            error: None,
        };
        match store.fetch(latest).await {
            Ok(rel) => {
                row.status = rel.info.status;
                row.chart = rel.chart.metadata.name;
                row.chart_version = rel.chart.metadata.version;
                row.app_version = rel.chart.metadata.app_version;
                row.last_deployed = rel.info.last_deployed;
            }
            Err(e) => {
                out.problems.push(e.to_string());
                row.error = Some(e.to_string());
            }
        }
        out.releases.push(row);
    }
    out
}

pub fn render_table(releases: &[ListedRelease]) -> String {
    let rows: Vec<Vec<String>> = releases
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.namespace.clone(),
                r.revision.to_string(),
                r.last_deployed.map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_default(),
                r.status.to_string(),
                if r.error.is_some() { "(unreadable)".into() } else { format!("{}-{}", r.chart, r.chart_version) },
                r.app_version.clone(),
                r.storage.to_string(),
            ]
        })
        .collect();
    super::columns::render(
        &["NAME", "NAMESPACE", "REVISION", "UPDATED", "STATUS", "CHART", "APP VERSION", "STORAGE"],
        &rows,
    )
}
