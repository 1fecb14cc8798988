//! Driftwatch's reading of Helm's storage equals what real Helm reports about the same
//! releases: revision lists, statuses, chart versions, descriptions and times
//! (`helm history -o json`), and manifests byte for byte (`helm get manifest --revision N`),
//! for Helm 3 and Helm 4, the Secret and the ConfigMap drivers, across install, upgrades, a
//! failed upgrade, a rollback and an uninstall with --keep-history.

mod common;

use std::process::Command;

use base64::Engine as _;
use common::{Helm, TestNamespace};
use driftwatch::cluster::ReleaseStore;
use driftwatch::helm::{Driver, ReleaseStatus, group_releases};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

/// Makes a history with every kind of revision Helm writes, with `driver` storage.
fn make_history(helm: Helm, ns: &str, driver: &str) {
    let chart = common::chart("fullstack");
    let env = [("HELM_DRIVER", driver)];
    let ok = |args: &[&str]| {
        helm.ok_env(args, &env);
    };
    ok(&["install", "shop", &chart, "-n", ns]);
    ok(&["upgrade", "shop", &chart, "-n", ns, "--set", "replicaCount=3"]);
    ok(&["upgrade", "shop", &chart, "-n", ns, "--set", "replicaCount=3,web.env.LOG_LEVEL=debug,cache.enabled=false"]);
    // A failed upgrade: the API server refuses an out-of-range port.
    let failed = helm.run_env(&["upgrade", "shop", &chart, "-n", ns, "--set", "service.port=99999"], &env);
    assert!(!failed.status.success(), "the bad upgrade was expected to fail");
    ok(&["rollback", "shop", "2", "-n", ns]);
    // A second release, uninstalled with its history kept.
    ok(&["install", "blog", &chart, "-n", ns, "--set", "statefulset.enabled=false,widget.enabled=false"]);
    ok(&["uninstall", "blog", "-n", ns, "--keep-history"]);
}

#[derive(serde::Deserialize, Debug)]
struct HelmHistoryEntry {
    revision: u32,
    updated: String,
    status: String,
    chart: String,
    app_version: String,
    description: String,
}

async fn decoded_equals_helm(helm: Helm, driver: &str) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("store-{}-{driver}", helm.short())).await;
    make_history(helm, &ns.name, driver);

    let store = ReleaseStore::new(client);
    let listing = store.list(Some(&ns.name)).await;
    assert!(listing.errors.is_empty() && listing.malformed.is_empty(), "{listing:?}");
    let histories = group_releases(listing.records);
    assert_eq!(histories.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), vec!["blog", "shop"]);
    let want_driver = if driver == "configmap" { Driver::ConfigMap } else { Driver::Secret };

    for history in &histories {
        assert_eq!(history.driver, want_driver);
        let env = [("HELM_DRIVER", driver)];
        let helm_history: Vec<HelmHistoryEntry> = serde_json::from_str(&helm.ok_env(
            &["history", &history.name, "-n", &ns.name, "-o", "json", "--max", "100"],
            &env,
        ))
        .unwrap();
        assert_eq!(
            history.revisions.iter().map(|r| r.revision).collect::<Vec<_>>(),
            helm_history.iter().map(|h| h.revision).collect::<Vec<_>>(),
            "revisions of {}",
            history.name
        );
        for (record, want) in history.revisions.iter().zip(&helm_history) {
            let what = format!("{} revision {} ({helm:?}, {driver})", history.name, record.revision);
            // From labels alone.
            assert_eq!(record.status.as_str(), want.status, "label status of {what}");
            // From the decoded payload.
            let rel = store.fetch(record).await.unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(rel.name, history.name);
            assert_eq!(rel.namespace, ns.name);
            assert_eq!(rel.version, record.revision);
            assert_eq!(rel.info.status.as_str(), want.status, "{what}");
            assert_eq!(format!("{}-{}", rel.chart.metadata.name, rel.chart.metadata.version), want.chart, "{what}");
            assert_eq!(rel.chart.metadata.app_version, want.app_version, "{what}");
            assert_eq!(rel.info.description, want.description, "{what}");
            let updated: Timestamp = want.updated.parse().unwrap();
            assert_eq!(rel.info.last_deployed, Some(updated), "{what}");
            let rev = record.revision.to_string();
            let manifest = helm.ok_env(&["get", "manifest", &history.name, "-n", &ns.name, "--revision", &rev], &env);
            assert_eq!(manifest, format!("{}\n", rel.manifest), "manifest of {what}");
        }
    }
    let shop = histories.iter().find(|h| h.name == "shop").unwrap();
    let statuses: Vec<_> = shop.revisions.iter().map(|r| r.status.clone()).collect();
    use ReleaseStatus::*;
    assert_eq!(statuses, vec![Superseded, Superseded, Superseded, Failed, Deployed]);
    assert_eq!(shop.reference().unwrap().revision, 5);
    let blog = histories.iter().find(|h| h.name == "blog").unwrap();
    assert_eq!(blog.latest().status, Uninstalled);
}

#[tokio::test]
async fn helm3_secrets_decode_as_helm_reports() {
    decoded_equals_helm(Helm::V3, "secret").await;
}

#[tokio::test]
async fn helm4_secrets_decode_as_helm_reports() {
    decoded_equals_helm(Helm::V4, "secret").await;
}

#[tokio::test]
async fn helm3_configmaps_decode_as_helm_reports() {
    decoded_equals_helm(Helm::V3, "configmap").await;
}

#[tokio::test]
async fn helm4_configmaps_decode_as_helm_reports() {
    decoded_equals_helm(Helm::V4, "configmap").await;
}

/// Helm 4 records server-side apply; Helm 3 records nothing (client-side).
#[tokio::test]
async fn apply_method_is_read_from_the_record() {
    let client = common::client().await;
    let store = ReleaseStore::new(client.clone());
    for helm in Helm::ALL {
        let ns = TestNamespace::new(&client, &format!("apply-{}", helm.short())).await;
        helm.ok(&["install", "shop", &common::chart("fullstack"), "-n", &ns.name, "--set", "widget.enabled=false"]);
        let listing = store.list(Some(&ns.name)).await;
        let rel = store.fetch(&listing.records[0]).await.unwrap();
        let want = match helm {
            Helm::V3 => driftwatch::helm::ApplyMethod::Csa,
            Helm::V4 => driftwatch::helm::ApplyMethod::Ssa,
        };
        assert_eq!(rel.apply_method, want, "{helm:?}");
    }
}

/// A corrupt record is reported with what is wrong and where; the other releases are still
/// listed, through the library and through `driftwatch check --list`.
#[tokio::test]
async fn a_corrupt_record_does_not_hide_the_others() {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, "corrupt").await;
    Helm::V3.ok(&["install", "shop", &common::chart("fullstack"), "-n", &ns.name, "--set", "widget.enabled=false"]);
    // A truncated write: the first half of a real gzip stream.
    let b64 = base64::engine::general_purpose::STANDARD;
    let whole = b64.decode(driftwatch::helm::release::encode_release_json(br#"{"name":"broken","manifest":"x"}"#)).unwrap();
    let truncated = b64.encode(&whole[..whole.len() / 2]);
    let corrupt: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "sh.helm.release.v1.broken.v1",
                     "labels": {"owner": "helm", "name": "broken", "version": "1", "status": "deployed"}},
        "type": "helm.sh/release.v1",
        "stringData": {"release": truncated}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns.name).create(&PostParams::default(), &corrupt).await.unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["check", "--list", "-n", &ns.name, "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let releases = doc["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 2, "{doc}");
    let broken = releases.iter().find(|r| r["name"] == "broken").unwrap();
    let err = broken["error"].as_str().unwrap();
    assert!(err.contains(&format!("secret {}/sh.helm.release.v1.broken.v1", ns.name)), "{err}");
    assert!(err.contains("truncated: the gzip stream ends early"), "{err}");
    let shop = releases.iter().find(|r| r["name"] == "shop").unwrap();
    assert_eq!(shop["chart"], "fullstack");
    assert!(shop.get("error").is_none());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: decoding secret"), "{stderr}");
}

/// Issue 18: a scan's payload listing (the second record read in a namespace lists the
/// namespace's records) never serves a record that was deleted and written again under its
/// name since (an uninstall and an install make revision 1 again: another object, another
/// uid, another manifest): the read returns the new one. For both drivers.
#[tokio::test]
async fn a_payload_listing_never_serves_a_record_written_again() {
    use kube::api::{DeleteParams, DynamicObject};
    let client = common::client().await;
    for (helm, driver) in [(Helm::V3, "secret"), (Helm::V4, "configmap")] {
        let ns = TestNamespace::new(&client, &format!("relisted-{}-{driver}", helm.short())).await;
        let n = ns.name.as_str();
        let env = [("HELM_DRIVER", driver)];
        let many = common::chart("many");
        for (name, apps) in [("a", "1"), ("b", "1"), ("c", "1"), ("d", "3")] {
            helm.ok_env(&["install", name, &many, "-n", n, "--set", &format!("apps={apps}")], &env);
        }
        let store = ReleaseStore::new(client.clone());
        let newest = |records: &[driftwatch::helm::RecordMeta], name: &str| records.iter().find(|r| r.release == name).unwrap().clone();
        let records = store.list(Some(n)).await.records;
        // a by GET; b makes the listing, which holds c's record too.
        for name in ["a", "b"] {
            let rel = store.fetch(&newest(&records, name)).await.unwrap();
            assert_eq!(rel.manifest.matches("kind: ConfigMap").count(), 1, "{name}");
        }
        // c's record is deleted and written again under its name, with d's payload (what an
        // uninstall and an install with other values do, in a moment: within the listing's life).
        let resource = if driver == "secret" { kube::core::ApiResource::erase::<Secret>(&()) } else { kube::core::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()) };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), n, &resource);
        let (c_name, d_name) = ("sh.helm.release.v1.c.v1", "sh.helm.release.v1.d.v1");
        let mut again = api.get(c_name).await.unwrap();
        again.data["data"] = api.get(d_name).await.unwrap().data["data"].clone();
        again.metadata.uid = None;
        again.metadata.resource_version = None;
        again.metadata.creation_timestamp = None;
        again.metadata.managed_fields = None;
        api.delete(c_name, &DeleteParams::default()).await.unwrap();
        api.create(&PostParams::default(), &again).await.unwrap();
        let c = newest(&store.list(Some(n)).await.records, "c");
        assert_ne!(c.uid, newest(&records, "c").uid);
        let rel = store.fetch(&c).await.unwrap();
        assert_eq!(rel.manifest.matches("kind: ConfigMap").count(), 3, "{driver}: the listed copy of the old record was served");
        // What the listing holds and did not change is served as it was.
        let rel = store.fetch(&newest(&records, "d")).await.unwrap();
        assert_eq!(rel.manifest.matches("kind: ConfigMap").count(), 3);
    }
}
