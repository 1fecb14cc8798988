//! `bench/fleet`'s fast fleet (issue 18) writes copies of helm-made releases: helm of both
//! majors must read a copy back exactly as it reads its sample (list, history, manifest,
//! values), and Driftwatch must find it as in sync as the sample, its objects written by the
//! same field manager with the same operation.

mod common;
#[path = "../bench/fleet_build.rs"]
#[allow(dead_code)]
mod fleet_build;

use common::{Helm, TestNamespace, check, kubectl};
use serde_json::Value;

fn json(helm: Helm, args: &[&str]) -> Value {
    serde_json::from_str(&helm.ok(args)).unwrap_or_else(|e| panic!("helm {args:?}: not JSON: {e}"))
}

/// What `helm list` says of one release, with the time it was listed at.
fn listed(helm: Helm, ns: &str, name: &str) -> Value {
    let all = json(helm, &["list", "-n", ns, "-o", "json"]);
    all.as_array().unwrap().iter().find(|r| r["name"] == name).cloned().unwrap_or_else(|| panic!("{helm:?} list -n {ns}: no {name}: {all}"))
}

#[tokio::test]
async fn copies_read_back_as_helm_made_them() {
    let client = common::client().await;
    let a = TestNamespace::new(&client, "fleetsample").await;
    let b = TestNamespace::new(&client, "fleetcopy").await;
    let (a, b) = (a.name.as_str(), b.name.as_str());
    // Helm 3, client-side, three revisions; Helm 4, server-side, one; two charts.
    Helm::V3.ok(&["install", "sample3", &common::chart("fullstack"), "-n", a, "--set", "hookJob.enabled=false,image.tag=2.4.0"]);
    Helm::V3.ok(&["upgrade", "sample3", &common::chart("fullstack"), "-n", a, "--set", "hookJob.enabled=false,image.tag=2.4.1"]);
    Helm::V3.ok(&["upgrade", "sample3", &common::chart("fullstack"), "-n", a, "--set", "hookJob.enabled=false,image.tag=2.4.2"]);
    Helm::V4.ok(&["install", "sample4", &common::chart("many"), "-n", a, "--set", "apps=2,image=registry.example.com/app:1.0.0"]);

    let resolver = driftwatch::cluster::Resolver::new(client.clone());
    for (sample, copy) in [("sample3", "copy3"), ("sample4", "copy4")] {
        let s = fleet_build::Sample::read(&client, a, sample).await.unwrap();
        let w = fleet_build::copy_release(&client, &resolver, &s, b, copy).await.unwrap();
        assert_eq!(w.records, s.records.len(), "{copy}: {w:?}");
        assert!(w.objects >= 8, "{copy}: {w:?}");
        let again = fleet_build::copy_release(&client, &resolver, &s, b, copy).await.unwrap();
        assert_eq!(again, fleet_build::Written::default(), "a copy already there is left alone");

        let as_sample = |text: String| text.replace(copy, sample).replace(b, a);
        for helm in Helm::ALL {
            let mut l = listed(helm, b, copy);
            l = serde_json::from_str(&as_sample(l.to_string())).unwrap();
            assert_eq!(l, listed(helm, a, sample), "{helm:?} list");
            let h = json(helm, &["history", copy, "-n", b, "-o", "json"]);
            assert_eq!(as_sample(h.to_string()), json(helm, &["history", sample, "-n", a, "-o", "json"]).to_string(), "{helm:?} history");
            let m = helm.ok(&["get", "manifest", copy, "-n", b]);
            assert_eq!(as_sample(m), helm.ok(&["get", "manifest", sample, "-n", a]), "{helm:?} get manifest");
            let v = helm.ok(&["get", "values", copy, "-n", b, "-o", "json"]);
            assert_eq!(v, helm.ok(&["get", "values", sample, "-n", a, "-o", "json"]), "{helm:?} get values");
        }

        let (code, copied) = check(copy, b, &[]);
        let (_, original) = check(sample, a, &[]);
        assert_eq!((code, &copied["drifted"]), (0, &Value::Bool(false)), "{copy}: {}", common::not_in_sync(&copied).join("\n"));
        assert_eq!(copied["summary"], original["summary"], "{copy}");
        assert_eq!((&copied["revision"], &copied["applyMethod"]), (&original["revision"], &original["applyMethod"]), "{copy}");

        // Written as helm writes: the same managers with the same operations, the same owner marks.
        let deployments = |ns: &str, release: &str| -> Vec<Value> {
            let list: Value = serde_json::from_str(&kubectl(&["get", "deployments", "-n", ns, "-o", "json", "--show-managed-fields"])).unwrap();
            let mut out: Vec<Value> = list["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["metadata"]["annotations"]["meta.helm.sh/release-name"] == release)
                .map(|d| {
                    let helm: Vec<Value> = d["metadata"]["managedFields"].as_array().unwrap().iter().filter(|f| f["manager"] == "helm").map(|f| serde_json::json!([f["operation"], f["fieldsV1"]])).collect();
                    serde_json::json!({"labels": d["metadata"]["labels"]["app.kubernetes.io/managed-by"], "ns": d["metadata"]["annotations"]["meta.helm.sh/release-namespace"] == ns, "helm": helm})
                })
                .collect();
            out.sort_by_key(|v| v.to_string());
            out
        };
        let copied = deployments(b, copy);
        assert!(!copied.is_empty(), "{copy}: no Deployment");
        assert_eq!(as_sample(serde_json::to_string(&copied).unwrap()), serde_json::to_string(&deployments(a, sample)).unwrap(), "{copy}: managed fields");
    }
}
