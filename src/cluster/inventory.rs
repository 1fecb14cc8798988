//! Reads one cluster for `driftwatch inventory`: the record labels (a metadata LIST per driver,
//! paginated) name each release's newest revision, whose payload decodes its chart (the first
//! of a namespace by GET, the rest from one LIST of the namespace's records that are not
//! superseded: [`crate::cluster::listing`]); with
//! `--drifted`, one LIST of DriftReports (where the controller runs), else a drift check per
//! release. Counts its requests. What the answer means is [`crate::inventory`]'s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::{Api, ListParams};

use crate::cluster::{ReleaseStore, StorageError};
use crate::helm::group_releases;
use crate::inventory::{Cluster, Release, State, reason_of, state_of};

/// Records decoded at once per cluster.
const FETCHES_AT_ONCE: usize = 8;
/// How long a cluster may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What to read.
#[derive(Clone, Debug)]
pub struct Ask {
    /// None: all namespaces.
    pub namespace: Option<String>,
    /// Read each release's drift (`--drifted`).
    pub drifted: bool,
}

/// A client for a kubeconfig context (None: the current one, or the pod's service account)
/// whose requests are counted.
async fn client_for(context: Option<&str>) -> Result<(kube::Client, String, Arc<AtomicU64>), String> {
    let mut config = crate::cluster::config_for(context).await.map_err(|e| e.to_string())?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    let server = config.cluster_url.to_string();
    let counter = Arc::new(AtomicU64::new(0));
    let seen = counter.clone();
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        seen.fetch_add(1, Ordering::Relaxed);
        req
    });
    let client = kube::client::ClientBuilder::try_from(config).map_err(|e| e.to_string())?.with_layer(&count).build();
    Ok((client, server, counter))
}

/// One cluster's answer: how it answered, and its releases at their newest revision.
pub async fn read(context: &str, current: bool, ask: &Ask) -> (Cluster, Vec<Release>) {
    let mut cluster = Cluster { context: context.to_string(), server: None, state: State::Ok, reason: None, releases: 0, requests: 0 };
    let (client, server, counter) = match client_for((!current).then_some(context)).await {
        Ok(c) => c,
        Err(reason) => {
            cluster.state = State::Error;
            cluster.reason = Some(reason);
            return (cluster, Vec::new());
        }
    };
    cluster.server = Some(server);
    let store = ReleaseStore::new(client.clone());
    let listing = store.list(ask.namespace.as_deref()).await;
    // A driver that could not be listed: the cluster did not answer (both), or answered only in
    // part (one); either way its state says why.
    let mut reasons: Vec<String> = Vec::new();
    for e in &listing.errors {
        if let StorageError::List { source, driver, .. } = e {
            let state = state_of(source);
            if cluster.state == State::Ok || state == State::Forbidden {
                cluster.state = state;
            }
            let reason = match state {
                // The same for both drivers: said once.
                State::Unreachable => reason_of(source, cluster.server.as_deref().unwrap_or_default()),
                _ => format!("{driver}s: {}", reason_of(source, "")),
            };
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
        }
    }
    if !reasons.is_empty() {
        cluster.reason = Some(reasons.join("; "));
    }
    let histories = group_releases(listing.records);
    let mut releases: Vec<Release> = futures::stream::iter(histories.iter().map(|h| {
        let store = store.clone();
        async move { Release { cluster: context.to_string(), release: store.newest(h).await, drifted: None } }
    }))
    .buffer_unordered(FETCHES_AT_ONCE)
    .collect()
    .await;
    if ask.drifted && !releases.is_empty() {
        drift_of(&client, &store, &histories, ask, &mut releases).await;
    }
    cluster.releases = releases.len();
    cluster.requests = counter.load(Ordering::Relaxed);
    (cluster, releases)
}

/// Each release's drift: from its DriftReport where the controller runs (one LIST), else from
/// a check of the release (the CLI's defaults; no policy applied).
async fn drift_of(client: &kube::Client, store: &ReleaseStore, histories: &[crate::helm::ReleaseHistory], ask: &Ask, releases: &mut [Release]) {
    let reports: Api<crate::api::DriftReport> = match &ask.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match reports.list(&ListParams::default()).await {
        Ok(list) => {
            for r in releases.iter_mut() {
                let report = list.items.iter().find(|d| d.metadata.namespace.as_deref() == Some(&r.release.namespace) && d.metadata.name.as_deref() == Some(&r.release.name));
                match report.and_then(|d| d.status.as_ref()).and_then(|s| s.drift.as_deref()) {
                    Some("Drifted") => r.drifted = Some(true),
                    Some("InSync") => r.drifted = Some(false),
                    _ => r.release.error = r.release.error.take().or_else(|| Some("no DriftReport says whether it drifted (not covered by a DriftPolicy?)".into())),
                }
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "no DriftReports to read: checking each release");
            let resolver = crate::cluster::Resolver::new(client.clone());
            let ignore = crate::drift::IgnoreRules::default();
            let settings = crate::check::CheckSettings::new(&ignore);
            for r in releases.iter_mut() {
                let Some(h) = histories.iter().find(|h| h.namespace == r.release.namespace && h.name == r.release.name) else { continue };
                let report = crate::check::check_release(store, &resolver, h, None, &settings).await;
                match report.error {
                    None => r.drifted = Some(report.drifted),
                    Some(e) => r.release.error = r.release.error.take().or(Some(e)),
                }
            }
        }
    }
}
