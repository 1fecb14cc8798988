//! An upgrade as `helm upgrade` makes it: a new controller beside the chart's older DriftReport
//! CRD (Helm installs a chart's CRDs and never upgrades them), which has a status subresource,
//! so the API server drops a status sent with the object. Reports still carry their status, a
//! change is still written, and once the CRD is applied as it is now (no subresource) the
//! controller writes reports the new way without a restart. On a control plane of the test's
//! own: the CRD is cluster-wide, and the other tests' controllers share the suite's.

mod common;

use common::{Helm, OwnCluster, start_controller_via, wait_for};
use serde_json::Value;

fn report(c: &OwnCluster, ns: &str, name: &str) -> Option<Value> {
    c.try_kubectl(&["get", "driftreport", name, "-n", ns, "-o", "json"]).and_then(|t| serde_json::from_str(&t).ok())
}

fn condition_is(r: &Value, type_: &str, status: &str) -> bool {
    r["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == type_ && c["status"] == status))
}

fn served_subresource(c: &OwnCluster) -> Option<bool> {
    c.try_kubectl(&["get", "--raw", "/apis/driftwatch.io/v1alpha1"]).map(|t| t.contains("driftreports/status"))
}

#[test]
fn reports_keep_their_status_under_the_older_crd_and_after_it() {
    let c = OwnCluster::start("driftwatch-crd-upgrade", 26940, Some(false));
    // The suite's CRDs applied now (the controller's start would apply them once per process,
    // `kubectl apply` would take the subresource off again if KUBECONFIG named this cluster).
    common::apply_crds();
    c.kubectl(&["apply", "-f", &common::repo_root().join("crds/driftwatch.io.yaml").display().to_string()]);
    // The CRD of the versions before: the same, with a status subresource.
    c.kubectl(&["patch", "crd", "driftreports.driftwatch.io", "--type=json", "-p", r#"[{"op":"add","path":"/spec/versions/0/subresources","value":{"status":{}}}]"#]);
    wait_for("the status subresource served", 30, || (served_subresource(&c) == Some(true)).then_some(()));
    let ns = "app";
    for n in ["driftwatch-system", ns] {
        c.kubectl(&["create", "namespace", n]);
    }
    c.helm_ok(Helm::V3, &["install", "web", &common::chart("many"), "-n", ns, "--set", "apps=2"]);
    c.kubectl_stdin(&["apply", "-f", "-"], &format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: team, namespace: {ns}}}\nspec: {{}}\n"));
    let log = format!("{}/controller-crd-upgrade.log", std::env::temp_dir().display());
    let _ctl = start_controller_via("driftwatch-system", "driftwatch-system", &[ns], &log, Some(&c.kubeconfig));

    let r = wait_for("a report with its status, under the old CRD", 90, || report(&c, ns, "web").filter(|r| condition_is(r, "Ready", "True")));
    assert_eq!(r["status"]["drift"], "InSync", "{}", r["status"]);
    c.kubectl(&["delete", "configmap", "web-app-0", "-n", ns]);
    wait_for("the change written, under the old CRD", 60, || report(&c, ns, "web").filter(|r| condition_is(r, "Drifted", "True")).map(|_| ()));
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("older than this controller"), "the controller says the CRD is old: {logs}");

    // The CRD as the chart has it now.
    c.kubectl(&["patch", "crd", "driftreports.driftwatch.io", "--type=json", "-p", r#"[{"op":"remove","path":"/spec/versions/0/subresources"}]"#]);
    wait_for("the status subresource gone", 30, || (served_subresource(&c) == Some(false)).then_some(()));
    c.kubectl(&["delete", "configmap", "web-app-1", "-n", ns]);
    let r = wait_for("a change written after the CRD changed", 60, || {
        report(&c, ns, "web").filter(|r| r["status"]["resources"].as_array().is_some_and(|rs| rs.iter().filter(|o| o["state"] == "Missing").count() == 2))
    });
    assert!(condition_is(&r, "Drifted", "True"), "{}", r["status"]);
    c.helm_ok(Helm::V4, &["install", "api", &common::chart("many"), "-n", ns, "--set", "apps=1"]);
    wait_for("a new report with its status, under the new CRD", 90, || report(&c, ns, "api").filter(|r| condition_is(r, "Ready", "True") && r["status"]["drift"] == "InSync").map(|_| ()));
}
