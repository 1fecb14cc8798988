//! `driftwatch check --list`: the releases Helm's storage holds, read by our own decoder —
//! the view `helm list -A --all` gives, one row per release at its newest revision.

use crate::cluster::ReleaseStore;
use crate::cluster::release_store::Listing;
use crate::helm::group_releases;

pub use crate::cluster::release_store::ListedRelease;

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
        let row = store.newest(&history).await;
        out.problems.extend(row.error.clone());
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
