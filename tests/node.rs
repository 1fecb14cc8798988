//! Releases whose pods really run, on the local cluster's node (issue 13), with the real helm
//! v3 and v4: `helm install --wait` returns once the pods are Ready; `helm upgrade --atomic` to
//! an image nobody serves fails and rolls back, and the DriftReport follows each step without
//! false drift; a pre-upgrade hook Job that exits 1 leaves a `failed` release and its Job.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Helm, TestNamespace, apply_yaml, condition, drifted, kubectl, report, start_controller, wait_for};
use serde_json::Value;

/// A small release: the web Deployment (two replicas, probes, a sidecar), its hook Job, no
/// StatefulSet (no storage here) and no cache.
const SMALL: &str = "statefulset.enabled=false,cache.enabled=false,widget.enabled=false";
/// An image on an address nothing listens on: a real ErrImagePull, and no traffic anywhere.
const UNPULLABLE: &str = "127.0.0.1:5999/missing/app";

fn policy(n: &str) {
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: p, namespace: {n}}}\nspec: {{interval: 1h}}\n"));
}

fn ready_pods(n: &str) -> usize {
    let out = kubectl(&["get", "pods", "-n", n, "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["items"].as_array().unwrap().iter().filter(|p| p["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))).count()
}

async fn install_wait(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("node-wait-{}", helm.short())).await;
    let n = ns.name.as_str();
    helm.ok(&["install", "app", &common::chart("fullstack"), "-n", n, "--set", SMALL, "--wait", "--timeout", "120s"]);
    assert!(ready_pods(n) >= 2, "helm --wait returned before the pods were Ready:\n{}", kubectl(&["get", "pods", "-n", n]));
    // The hook Job ran to completion (before-hook-creation keeps it until the next upgrade).
    let job = kubectl(&["get", "job", "app-fullstack-migrate", "-n", n, "-o", "jsonpath={.status.succeeded}"]);
    assert_eq!(job.trim(), "1");
    // With pods running, the kubelet and the controllers write status all day: no drift.
    let platform = TestNamespace::new(&client, &format!("node-wait-{}-pf", helm.short())).await;
    let log = format!("{}/controller-{n}.log", std::env::temp_dir().display());
    let _ctl = start_controller(&platform.name, &platform.name, &[n], &log);
    policy(n);
    let r = wait_for("the report", 60, || report(n, "app").filter(|r| condition(r, "Ready").is_some_and(|c| c["status"] == "True")));
    assert_eq!(drifted(&r), Some("False"), "running pods made drift: {}", r["status"]);
}

#[tokio::test]
async fn helm3_install_wait_returns_when_pods_are_ready() {
    install_wait(Helm::V3).await;
}

#[tokio::test]
async fn helm4_install_wait_returns_when_pods_are_ready() {
    install_wait(Helm::V4).await;
}

async fn atomic_rollback(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("node-atomic-{}", helm.short())).await;
    let platform = TestNamespace::new(&client, &format!("node-atomic-{}-pf", helm.short())).await;
    let n = ns.name.as_str();
    helm.ok(&["install", "app", &common::chart("fullstack"), "-n", n, "--set", SMALL, "--wait", "--timeout", "120s"]);
    let log = format!("{}/controller-{n}.log", std::env::temp_dir().display());
    let _ctl = start_controller(&platform.name, &platform.name, &[n], &log);
    policy(n);
    wait_for("the report", 60, || report(n, "app").filter(|r| drifted(r) == Some("False")));

    // Watch the report while helm upgrades to an image nobody serves and gives up.
    let (n2, helm2) = (n.to_string(), helm);
    let upgrade = std::thread::spawn(move || {
        let image = format!("image.repository={UNPULLABLE},hookJob.enabled=false");
        helm2.run(&["upgrade", "app", &common::chart("fullstack"), "-n", &n2, "--set", SMALL, "--set", &image, "--atomic", "--timeout", "60s"])
    });
    let mut seen = BTreeSet::new();
    let mut drift_seen = BTreeSet::new();
    while !upgrade.is_finished() {
        if let Some(r) = report(n, "app") {
            // The report is made against the deployed revision; a pending one shows in the
            // ReleaseHealthy condition.
            if let (Some(rev), Some(st)) = (r["status"]["release"]["revision"].as_u64(), r["status"]["release"]["status"].as_str()) {
                let health = condition(&r, "ReleaseHealthy").map(|c| format!("{} ({})", c["reason"].as_str().unwrap_or(""), c["message"].as_str().unwrap_or(""))).unwrap_or_default();
                seen.insert(format!("{rev}:{st} {health}"));
                drift_seen.insert(format!("{} when {health}", r["status"]["drift"].as_str().unwrap_or_default()));
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = upgrade.join().unwrap();
    assert!(!out.status.success(), "the upgrade to {UNPULLABLE} should fail: {}", String::from_utf8_lossy(&out.stdout));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("rolled back") || said.contains("rollback"), "helm did not roll back: {said}");
    let history = helm.ok(&["history", "app", "-n", n, "-o", "json"]);
    let history: Value = serde_json::from_str(&history).unwrap();
    let statuses: Vec<String> = history.as_array().unwrap().iter().map(|h| format!("{}:{}", h["revision"], h["status"].as_str().unwrap())).collect();
    assert_eq!(statuses, ["1:superseded", "2:failed", "3:deployed"], "helm history");
    // The report saw the upgrade pending, and ends on the rollback, in sync with it.
    let r = wait_for("the report of the rollback", 60, || report(n, "app").filter(|r| r["status"]["release"]["revision"] == 3 && r["status"]["release"]["status"] == "deployed" && condition(r, "Ready").is_some_and(|c| c["status"] == "True")));
    assert!(seen.iter().any(|s| s.starts_with("1:deployed Pending (revision 2 is pending-upgrade")), "the report never showed the pending upgrade: {seen:?}");
    assert_eq!(drifted(&r), Some("False"), "{}", r["status"]);
    // While Helm applies a revision (pending-*), what it has applied is not drift. Between the
    // failed upgrade and the rollback the objects really are at the failed revision: that
    // moment (ReleaseHealthy says Failed, or PartialUpgrade) may be seen as Drifted, never another.
    let false_drift: Vec<&String> =
        drift_seen.iter().filter(|d| d.starts_with("Drifted") && !d.contains("revision 2 failed") && !d.contains("revision 2 was applied part-way")).collect();
    assert!(false_drift.is_empty(), "false drift along the way: {false_drift:?} (steps {seen:?})");
    let healthy = condition(&r, "ReleaseHealthy").unwrap();
    assert_eq!(healthy["status"], "True", "{healthy}");
}

#[tokio::test]
async fn helm3_atomic_upgrade_to_an_unpullable_image_rolls_back() {
    atomic_rollback(Helm::V3).await;
}

#[tokio::test]
async fn helm4_atomic_upgrade_to_an_unpullable_image_rolls_back() {
    atomic_rollback(Helm::V4).await;
}

async fn failing_hook(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("node-hook-{}", helm.short())).await;
    let n = ns.name.as_str();
    helm.ok(&["install", "app", &common::chart("fullstack"), "-n", n, "--set", SMALL]);
    // A pre-upgrade hook Job that exits 1.
    let out = helm.run(&["upgrade", "app", &common::chart("fullstack"), "-n", n, "--set", SMALL, "--set", "hookJob.exitCode=1,hookJob.events=pre-upgrade", "--timeout", "60s"]);
    assert!(!out.status.success(), "a hook that exits 1 fails the upgrade");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("app-fullstack-migrate"), "helm names the hook: {said}");
    let history: Value = serde_json::from_str(&helm.ok(&["history", "app", "-n", n, "-o", "json"])).unwrap();
    assert_eq!(history.as_array().unwrap().last().unwrap()["status"], "failed");
    // The Job is left behind, failed, for the diagnosis to find.
    let job: Value = serde_json::from_str(&kubectl(&["get", "job", "app-fullstack-migrate", "-n", n, "-o", "json"])).unwrap();
    assert_eq!(job["metadata"]["annotations"]["helm.sh/hook"], "pre-upgrade");
    assert!(job["status"]["failed"].as_u64().unwrap_or(0) >= 1, "{}", job["status"]);
}

#[tokio::test]
async fn helm3_failing_hook_leaves_a_failed_release_and_its_job() {
    failing_hook(Helm::V3).await;
}

#[tokio::test]
async fn helm4_failing_hook_leaves_a_failed_release_and_its_job() {
    failing_hook(Helm::V4).await;
}
