//! `driftwatch preview upgrade` against the real `helm upgrade` (issue 16, first cases): drift
//! made for real (a kubectl-edit of a memory limit, a `kubectl scale`, a server-side-apply
//! hotfix with its own manager, a key added by hand, an edited custom resource), previewed from
//! `helm template`, then the real upgrade run: every predicted field is compared with the live
//! state afterwards, and every predicted conflict with the error helm prints.

mod common;

use common::{Helm, TestNamespace, kubectl, kubectl_stdin};
use serde_json::Value;

const LIGHT: &str = "statefulset.enabled=false,cache.enabled=false,replicaCount=1,web.sidecar.enabled=false,web.resources.requests.cpu=10m,hookJob.enabled=false";

fn preview(helm: Helm, n: &str, extra: &[&str]) -> Value {
    let rendered = helm.ok(&["template", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT]);
    let mut args = vec!["preview", "upgrade", "app", "-n", n, "-f", "-", "-o", "json"];
    args.extend_from_slice(extra);
    let out = common::driftwatch_stdin(&args, &rendered);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn live(kind: &str, n: &str) -> Value {
    serde_json::from_str(&kubectl(&["get", kind, "app-fullstack", "-n", n, "-o", "json"])).unwrap()
}

/// Each predicted field against the live state after the real operation: (agreed, lines).
fn compare(doc: &Value, n: &str) -> (usize, Vec<String>) {
    let mut agreed = 0;
    let mut disagreed = Vec::new();
    for row in doc["fields"].as_array().unwrap() {
        let kind = row["kind"].as_str().unwrap();
        let path = row["path"].as_str().unwrap();
        let now = live(&kind.to_lowercase(), n).pointer(path).cloned();
        let expected = match row["outcome"].as_str().unwrap() {
            "reverted" | "takenOver" | "adopted" => row.get("after").cloned(),
            "kept" | "conflict" => row.get("before").cloned(),
            "removed" => None,
            other => panic!("unexpected outcome {other}"),
        };
        // Quantities may come back normalised; these cases use plain values.
        if now == expected {
            agreed += 1;
        } else {
            disagreed.push(format!("{kind} {path}: predicted {} {expected:?}, live {now:?}", row["outcome"]));
        }
    }
    (agreed, disagreed)
}

async fn upgrade_as_predicted(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("preview-{}", helm.short())).await;
    let n = ns.name.as_str();
    helm.ok(&["install", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT]);
    kubectl(&["patch", "deploy", "app-fullstack", "-n", n, "--type=json", "-p", r#"[{"op":"replace","path":"/spec/template/spec/containers/0/resources/limits/memory","value":"1Gi"}]"#, "--field-manager=kubectl-edit"]);
    kubectl(&["scale", "deploy", "app-fullstack", "-n", n, "--replicas=2"]);
    kubectl(&["patch", "widget", "app-fullstack", "-n", n, "--type=merge", "-p", r#"{"spec":{"color":"red"}}"#, "--field-manager=kubectl-edit"]);
    kubectl(&["patch", "cm", "app-fullstack", "-n", n, "--type=merge", "-p", r#"{"data":{"extra":"by-hand"}}"#, "--field-manager=kubectl-edit"]);
    kubectl_stdin(&["apply", "--server-side", "--field-manager=hotfix", "--force-conflicts", "-f", "-"], &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: app-fullstack, namespace: {n}}}\ndata: {{greeting: hotfix}}\n"));

    let doc = preview(helm, n, &[]);
    let outcomes: Vec<String> = doc["fields"].as_array().unwrap().iter().map(|r| format!("{} {} {}", r["outcome"].as_str().unwrap(), r["kind"].as_str().unwrap(), r["path"].as_str().unwrap())).collect();
    let upgrade = helm.run(&["upgrade", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT]);
    let said = String::from_utf8_lossy(&upgrade.stderr).to_string();
    match helm {
        Helm::V3 => {
            assert_eq!(
                outcomes,
                [
                    "reverted ConfigMap /data/greeting",
                    "kept ConfigMap /data/extra",
                    "reverted Deployment /spec/replicas",
                    "reverted Deployment /spec/template/spec/containers/0/resources/limits/memory",
                    "kept Widget /spec/color"
                ],
                "{doc:#}"
            );
            assert!(doc["summary"].as_str().unwrap().starts_with("this upgrade reverts 3 manual changes, and keeps 2 changes silently"), "{doc:#}");
            assert!(upgrade.status.success(), "{said}");
            let (agreed, disagreed) = compare(&doc, n);
            assert!(disagreed.is_empty(), "{disagreed:#?}");
            assert_eq!(agreed, 5);
        }
        Helm::V4 => {
            // Server-side apply: each field another manager owns is a conflict, and helm says so.
            assert_eq!(
                outcomes,
                [
                    "conflict ConfigMap /data/greeting",
                    "kept ConfigMap /data/extra",
                    "conflict Deployment /spec/replicas",
                    "conflict Deployment /spec/template/spec/containers/0/resources/limits/memory",
                    "conflict Widget /spec/color"
                ],
                "{doc:#}"
            );
            assert!(!upgrade.status.success(), "the predicted conflicts did not happen");
            for (manager, field) in [("hotfix", ".data.greeting"), ("kubectl", ".spec.replicas"), ("kubectl-edit", "resources.limits.memory"), ("kubectl-edit", ".spec.color")] {
                assert!(said.contains(&format!("\"{manager}\"")) && said.contains(field), "helm does not name {manager} on {field}: {said}");
            }
            let (_, disagreed) = compare(&doc, n);
            assert!(disagreed.is_empty(), "a failed upgrade changed a conflicting field: {disagreed:#?}");
            // With --force-conflicts: taken over.
            let forced = preview(helm, n, &["--force-conflicts"]);
            let takes: Vec<&str> = forced["fields"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
            assert_eq!(takes, ["takenOver", "kept", "takenOver", "takenOver", "takenOver"], "{forced:#}");
            helm.ok(&["upgrade", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT, "--force-conflicts"]);
            let (agreed, disagreed) = compare(&forced, n);
            assert!(disagreed.is_empty(), "{disagreed:#?}");
            assert_eq!(agreed, 5);
        }
    }
}

#[tokio::test]
async fn helm3_upgrade_does_what_the_preview_says() {
    upgrade_as_predicted(Helm::V3).await;
}

#[tokio::test]
async fn helm4_upgrade_does_what_the_preview_says() {
    upgrade_as_predicted(Helm::V4).await;
}

/// The seed's story: a memory limit edited after two upgrades; the rollback to the first
/// revision, previewed, then run.
async fn rollback_as_predicted(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("preview-rb-{}", helm.short())).await;
    let n = ns.name.as_str();
    helm.ok(&["install", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT]);
    helm.ok(&["upgrade", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT, "--set", "config.data.greeting=bonjour"]);
    helm.ok(&["upgrade", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT, "--set", "config.data.greeting=hola"]);
    kubectl(&["patch", "deploy", "app-fullstack", "-n", n, "--type=json", "-p", r#"[{"op":"replace","path":"/spec/template/spec/containers/0/resources/limits/memory","value":"1Gi"}]"#, "--field-manager=kubectl-edit"]);
    let out = common::driftwatch(&["preview", "rollback", "app", "1", "-n", n, "-o", "json", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &doc["fields"][0];
    assert_eq!((row["path"].as_str(), row["manager"].as_str()), (Some("/spec/template/spec/containers/0/resources/limits/memory"), Some("kubectl-edit")), "{doc:#}");
    let rollback = helm.run(&["rollback", "app", "1", "-n", n]);
    match row["outcome"].as_str().unwrap() {
        "reverted" => {
            assert!(rollback.status.success(), "{}", String::from_utf8_lossy(&rollback.stderr));
            assert_eq!(doc["summary"], "this rollback reverts 1 manual change");
        }
        "conflict" => {
            assert!(!rollback.status.success(), "a predicted conflict did not happen");
            assert!(String::from_utf8_lossy(&rollback.stderr).contains("\"kubectl-edit\""), "{}", String::from_utf8_lossy(&rollback.stderr));
        }
        other => panic!("unexpected {other}: {doc:#}"),
    }
    let (agreed, disagreed) = compare(&doc, n);
    assert!(disagreed.is_empty(), "{disagreed:#?}");
    assert_eq!(agreed, 1);
}

#[tokio::test]
async fn helm3_rollback_does_what_the_preview_says() {
    rollback_as_predicted(Helm::V3).await;
}

#[tokio::test]
async fn helm4_rollback_does_what_the_preview_says() {
    rollback_as_predicted(Helm::V4).await;
}
