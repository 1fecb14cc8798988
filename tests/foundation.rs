//! The ground every other test stands on: the local control plane runs the pinned
//! Kubernetes, both helm CLIs and helm-diff work against it, and `helm install` writes
//! real release Secrets that kube-rs can list.

mod common;

use std::collections::BTreeMap;

use common::{Helm, TestNamespace};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};

#[tokio::test]
async fn control_plane_serves_the_pinned_kubernetes_version() {
    let client = common::client().await;
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.git_version, common::pinned("KUBE_VERSION"));
    // kubectl sees the same server.
    let out = common::kubectl(&["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["serverVersion"]["gitVersion"], common::pinned("KUBE_VERSION"));
}

#[test]
fn both_helms_report_their_full_pinned_versions() {
    for (helm, key) in [(Helm::V3, "HELM3_VERSION"), (Helm::V4, "HELM4_VERSION")] {
        let out = helm.ok(&["version", "--short"]);
        let want = common::pinned(key);
        assert!(out.starts_with(&want), "helm {helm:?} says {out:?}, expected {want}");
    }
}

#[test]
fn helm_diff_plugin_works_for_both_helms() {
    let want = common::pinned("HELM_DIFF_VERSION");
    for helm in Helm::ALL {
        let out = helm.ok(&["diff", "version"]);
        assert_eq!(out.trim(), want.trim_start_matches('v'), "helm {helm:?} diff version");
    }
}

/// Installs the test chart with one helm, upgrades it once, and checks the release Secrets
/// exactly as Helm's storage driver writes them.
async fn install_creates_release_secrets(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("found-{}", helm.short())).await;
    let release = "shop";
    let chart = common::chart("fullstack");
    helm.ok(&["install", release, &chart, "-n", &ns.name]);
    helm.ok(&["upgrade", release, &chart, "-n", &ns.name, "--set", "replicaCount=3"]);

    let secrets: Api<Secret> = Api::namespaced(client, &ns.name);
    let list = secrets
        .list(&ListParams::default().labels("owner=helm"))
        .await
        .unwrap();
    let mut by_name: BTreeMap<String, Secret> = list
        .items
        .into_iter()
        .map(|s| (s.metadata.name.clone().unwrap(), s))
        .collect();
    assert_eq!(
        by_name.keys().cloned().collect::<Vec<_>>(),
        vec![format!("sh.helm.release.v1.{release}.v1"), format!("sh.helm.release.v1.{release}.v2")]
    );
    for (rev, status) in [(1, "superseded"), (2, "deployed")] {
        let s = by_name.remove(&format!("sh.helm.release.v1.{release}.v{rev}")).unwrap();
        assert_eq!(s.type_.as_deref(), Some("helm.sh/release.v1"));
        let labels = s.metadata.labels.unwrap_or_default();
        assert_eq!(labels.get("name").map(String::as_str), Some(release));
        assert_eq!(labels.get("owner").map(String::as_str), Some("helm"));
        assert_eq!(labels.get("status").map(String::as_str), Some(status));
        assert_eq!(labels.get("version"), Some(&rev.to_string()));
        let payload = &s.data.unwrap_or_default()["release"].0;
        // Helm's own base64 of a gzip stream: the bytes start with "H4sI".
        assert!(payload.starts_with(b"H4sI"), "release payload is not base64(gzip)");
    }
}

#[tokio::test]
async fn helm3_install_creates_release_secrets() {
    install_creates_release_secrets(Helm::V3).await;
}

#[tokio::test]
async fn helm4_install_creates_release_secrets() {
    install_creates_release_secrets(Helm::V4).await;
}
