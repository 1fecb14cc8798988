//! Release health and failure diagnosis (issue 15), each failure made for real on the local
//! node with the real helm v3 and v4: a hook Job that exits 1, a hook that never completes, an
//! install over an object that already exists, an image nobody serves, a container that exits,
//! a ValidatingAdmissionPolicy that denies part of an upgrade, a ResourceQuota the upgrade
//! exceeds, a pod that fits no node, a `helm upgrade --wait` killed with SIGKILL (and `driftwatch unlock`), and every
//! release record deleted. What `driftwatch diagnose`, `driftwatch check` and the controller's
//! DriftReports say about each.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Helm, TestNamespace, apply_yaml, condition, driftwatch, kubectl, report, start_controller, wait_for};
use serde_json::Value;

/// One small pod per release, light requests, no hook: many tests share the one node.
const LIGHT: &str = "statefulset.enabled=false,cache.enabled=false,widget.enabled=false,replicaCount=1,web.sidecar.enabled=false,web.resources.requests.cpu=10m,web.resources.requests.memory=16Mi,hookJob.enabled=false";
const UNPULLABLE: &str = "127.0.0.1:5999/missing/app";

fn diagnose(release: &str, ns: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["diagnose", release, "-n", ns, "-o", "json"];
    args.extend_from_slice(extra);
    let out = driftwatch(&args);
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("diagnose: not JSON ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), doc)
}

fn finding<'a>(doc: &'a Value, kind: &str) -> Option<&'a Value> {
    doc["findings"].as_array()?.iter().find(|f| f["type"] == kind)
}

fn kinds(doc: &Value) -> Vec<String> {
    doc["findings"].as_array().map(|a| a.iter().map(|f| f["type"].as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

fn cause(doc: &Value) -> String {
    doc["diagnosis"]["cause"].as_str().unwrap_or("none").to_string()
}

fn evidence(doc: &Value) -> String {
    doc["diagnosis"]["evidence"].as_array().map(|a| a.iter().map(|l| l.as_str().unwrap()).collect::<Vec<_>>().join("\n")).unwrap_or_default()
}

fn policy(n: &str, health: &str) {
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: p, namespace: {n}}}\nspec: {{interval: 1h, health: {{{health}}}}}\n"));
}

fn report_finding(n: &str, kind: &str) -> Option<Value> {
    let r = report(n, "app")?;
    r["status"]["findings"].as_array()?.iter().find(|f| f["type"] == kind).cloned()
}

fn no_value_leaks(doc: &Value) {
    // The chart's Secret password (a release value that renders only into a Secret).
    let text = doc.to_string();
    assert!(!text.contains("not-a-real-password"), "a Secret value leaked: {text}");
}

/// A controller for one namespace, and its policy.
fn controller(n: &str, health: &str) -> common::ControllerProcess {
    let log = format!("{}/controller-{n}.log", std::env::temp_dir().display());
    let ctl = start_controller(n, n, &[n], &log);
    policy(n, health);
    ctl
}

// --- hooks ---------------------------------------------------------------------------------

async fn hook_fails(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("health-hook-{}", helm.short())).await;
    let n = ns.name.as_str();
    helm.ok(&["install", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT]);
    let ctl = controller(n, "pendingTimeout: 15m");
    wait_for("the first report", 60, || report(n, "app").filter(|r| condition(r, "Ready").is_some_and(|c| c["status"] == "True")));
    let out = helm.run(&["upgrade", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT, "--set", "hookJob.enabled=true,hookJob.exitCode=1,hookJob.events=pre-upgrade", "--timeout", "60s"]);
    assert!(!out.status.success(), "a hook that exits 1 fails the upgrade");

    let (code, doc) = diagnose("app", n, &[]);
    assert_eq!(code, 0);
    assert_eq!(cause(&doc), "HookFailed", "{doc:#}");
    assert!(doc["diagnosis"]["summary"].as_str().unwrap().contains("app-fullstack-migrate"), "{doc:#}");
    assert!(evidence(&doc).contains("Job app-fullstack-migrate (pre-upgrade hook): BackoffLimitExceeded"), "{}", evidence(&doc));
    assert_eq!(kinds(&doc), ["Failed", "HookOrphans"], "{doc:#}");
    let orphan = &finding(&doc, "HookOrphans").unwrap()["resources"][0];
    assert_eq!((orphan["apiVersion"].as_str(), orphan["kind"].as_str(), orphan["name"].as_str(), orphan["state"].as_str()), (Some("batch/v1"), Some("Job"), Some("app-fullstack-migrate"), Some("failed")));
    assert!(doc["next"].as_array().unwrap().iter().any(|c| c == &format!("kubectl logs job/app-fullstack-migrate -n {n} --all-containers")), "{doc:#}");
    assert_eq!(doc["history"][0]["status"], "failed");
    assert_eq!(doc["history"][1]["status"], "deployed");
    no_value_leaks(&doc);

    // driftwatch check says it too.
    let (_, checked) = common::check("app", n, &[]);
    assert_eq!(checked["findings"][0]["type"], "Failed", "{checked:#}");
    assert_eq!(checked["findings"][0]["diagnosis"]["cause"], "HookFailed");

    // The controller: findings in the report, ReleaseHealthy's reason, an Event, a metric.
    let r = wait_for("the report's Failed finding", 60, || report_finding(n, "HookOrphans").and(report(n, "app")));
    let healthy = condition(&r, "ReleaseHealthy").unwrap();
    assert_eq!((healthy["status"].as_str(), healthy["reason"].as_str()), (Some("False"), Some("Failed")), "{healthy}");
    assert!(healthy["message"].as_str().unwrap().contains("HookFailed"), "{healthy}");
    let f = report_finding(n, "Failed").unwrap();
    assert_eq!(f["diagnosis"]["cause"], "HookFailed");
    no_value_leaks(&r);
    wait_for("the ReleaseUnhealthy Event", 30, || {
        let ev = kubectl(&["get", "events", "-n", n, "--field-selector", "reason=ReleaseUnhealthy", "-o", "json"]);
        let ev: Value = serde_json::from_str(&ev).unwrap();
        ev["items"].as_array().filter(|a| !a.is_empty()).cloned()
    });
    let line = format!("driftwatch_release_findings{{namespace=\"{n}\",release=\"app\",type=\"HookOrphans\"}}");
    assert_eq!(wait_for("the findings metric", 30, || common::metric(ctl.metrics_port, &line)), "1");
}

#[tokio::test]
async fn helm3_a_failing_hook_is_diagnosed() {
    hook_fails(Helm::V3).await;
}

#[tokio::test]
async fn helm4_a_failing_hook_is_diagnosed() {
    hook_fails(Helm::V4).await;
}

async fn hook_never_completes(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("health-hookwait-{}", helm.short())).await;
    let n = ns.name.as_str();
    helm.ok(&["install", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT]);
    let out = helm.run(&["upgrade", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT, "--set", "hookJob.enabled=true,hookJob.command={/app/web},hookJob.events=pre-upgrade", "--timeout", "20s"]);
    assert!(!out.status.success(), "a hook that never completes times out");
    let (_, doc) = diagnose("app", n, &[]);
    assert_eq!(cause(&doc), "HookTimeout", "{doc:#}");
    assert!(evidence(&doc).contains("Job app-fullstack-migrate (pre-upgrade hook) is still running"), "{}", evidence(&doc));
    let orphan = &finding(&doc, "HookOrphans").expect("the running hook Job is left behind")["resources"][0];
    assert_eq!((orphan["name"].as_str(), orphan["state"].as_str()), (Some("app-fullstack-migrate"), Some("running")));
}

#[tokio::test]
async fn helm3_a_hook_that_never_completes_is_a_hook_timeout() {
    hook_never_completes(Helm::V3).await;
}

#[tokio::test]
async fn helm4_a_hook_that_never_completes_is_a_hook_timeout() {
    hook_never_completes(Helm::V4).await;
}

// --- an object that already exists --------------------------------------------------------

async fn already_exists(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("health-exists-{}", helm.short())).await;
    let n = ns.name.as_str();
    kubectl(&["create", "configmap", "app-fullstack", "-n", n, "--from-literal=greeting=mine"]);
    let out = helm.run(&["install", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT]);
    assert!(!out.status.success(), "helm install over an unowned object fails");
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists and cannot be imported"), "{}", String::from_utf8_lossy(&out.stderr));
    // Helm wrote no record: without the rendered manifest there is nothing to go on, and the
    // message says what to pass.
    let out = driftwatch(&["diagnose", "app", "-n", n]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("helm template app CHART"), "{}", String::from_utf8_lossy(&out.stderr));
    // With what helm renders, piped in.
    let rendered = helm.ok(&["template", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT]);
    let out = common::driftwatch_stdin(&["diagnose", "app", "-n", n, "-o", "json", "-f", "-"], &rendered);
    assert_eq!(out.status.code(), Some(0));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cause(&doc), "ResourceAlreadyExists", "{doc:#}");
    assert!(evidence(&doc).contains("ConfigMap app-fullstack exists: not stamped by Helm; made by kubectl-create"), "{}", evidence(&doc));
    assert_eq!(evidence(&doc).lines().count(), 1, "only the object that exists: {}", evidence(&doc));
    assert!(doc["next"][1].as_str().unwrap().starts_with(&format!("kubectl annotate configmap/app-fullstack -n {n} meta.helm.sh/release-name=app")), "{doc:#}");
}

#[tokio::test]
async fn helm3_an_install_over_an_existing_object_names_it() {
    already_exists(Helm::V3).await;
}

#[tokio::test]
async fn helm4_an_install_over_an_existing_object_names_it() {
    already_exists(Helm::V4).await;
}

// --- pods that do not come up ---------------------------------------------------------------

async fn upgrade_wait_fails(helm: Helm, set: &str, prefix: &str) -> (String, TestNamespace) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("health-{prefix}-{}", helm.short())).await;
    let n = ns.name.clone();
    helm.ok(&["install", "app", &common::chart("fullstack"), "-n", &n, "--set", LIGHT, "--wait", "--timeout", "120s"]);
    let out = helm.run(&["upgrade", "app", &common::chart("fullstack"), "-n", &n, "--set", LIGHT, "--set", set, "--wait", "--timeout", "30s"]);
    assert!(!out.status.success(), "the upgrade with {set} should fail");
    (n, ns)
}

async fn image_pull(helm: Helm) {
    let (n, _ns) = upgrade_wait_fails(helm, &format!("image.repository={UNPULLABLE}"), "pull").await;
    let (_, doc) = diagnose("app", &n, &[]);
    assert_eq!(cause(&doc), "ImagePull", "{doc:#}");
    let summary = doc["diagnosis"]["summary"].as_str().unwrap();
    assert!(summary.contains(&format!("image {UNPULLABLE}:1 (pod app-fullstack-")), "{summary}");
    assert!(evidence(&doc).contains("ErrImagePull") || evidence(&doc).contains("ImagePullBackOff"), "{}", evidence(&doc));
}

#[tokio::test]
async fn helm3_an_image_that_cannot_be_pulled_is_image_pull() {
    image_pull(Helm::V3).await;
}

#[tokio::test]
async fn helm4_an_image_that_cannot_be_pulled_is_image_pull() {
    image_pull(Helm::V4).await;
}

async fn crash_loop(helm: Helm) {
    let (n, _ns) = upgrade_wait_fails(helm, "web.env.TESTAPP_EXIT=3", "crash").await;
    let (_, doc) = diagnose("app", &n, &[]);
    assert_eq!(cause(&doc), "CrashLoop", "{doc:#}");
    assert!(doc["diagnosis"]["summary"].as_str().unwrap().contains("container web of pod app-fullstack-"), "{doc:#}");
    assert!(evidence(&doc).contains("last exit 3"), "{}", evidence(&doc));
    assert!(doc["next"].as_array().unwrap().iter().any(|c| c.as_str().unwrap().ends_with("-c web --previous")), "{doc:#}");
}

#[tokio::test]
async fn helm3_a_container_that_exits_is_a_crash_loop() {
    crash_loop(Helm::V3).await;
}

#[tokio::test]
async fn helm4_a_container_that_exits_is_a_crash_loop() {
    crash_loop(Helm::V4).await;
}

async fn unschedulable(helm: Helm) {
    // More CPU than the node has: the scheduler says so, and the pod stays Pending.
    let (n, _ns) = upgrade_wait_fails(helm, "web.resources.requests.cpu=64,web.resources.limits.cpu=64", "sched").await;
    let (_, doc) = diagnose("app", &n, &[]);
    assert_eq!(cause(&doc), "Unschedulable", "{doc:#}");
    assert!(evidence(&doc).contains("Insufficient cpu"), "{}", evidence(&doc));
}

#[tokio::test]
async fn helm3_a_pod_that_fits_no_node_is_unschedulable() {
    unschedulable(Helm::V3).await;
}

#[tokio::test]
async fn helm4_a_pod_that_fits_no_node_is_unschedulable() {
    unschedulable(Helm::V4).await;
}

// --- admission and quota --------------------------------------------------------------------

/// A ValidatingAdmissionPolicy (real admission, no webhook) that denies Deployments of more
/// than 3 replicas in one namespace; returns once the API server enforces it.
fn deny_more_than_three_replicas(n: &str) {
    apply_yaml(&format!(
        "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {n}-max-replicas}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules: [{{apiGroups: [apps], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [deployments]}}]
  validations:
    - expression: \"object.spec.replicas <= 3\"
      message: \"replicas must be at most 3 (platform policy)\"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {n}-max-replicas}}
spec:
  policyName: {n}-max-replicas
  validationActions: [Deny]
  matchResources:
    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {n}}}}}
"
    ));
    wait_for("the admission policy to be enforced", 60, || {
        let out = Command::new("kubectl").args(["create", "deployment", "probe", "--image=x", "--replicas=5", "-n", n, "--dry-run=server"]).output().unwrap();
        (!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("replicas must be at most 3")).then_some(())
    });
}

async fn admission_denied(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("health-vap-{}", helm.short())).await;
    let n = ns.name.as_str();
    helm.ok(&["install", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT]);
    deny_more_than_three_replicas(n);
    // The ConfigMap is applied, then the Deployment is denied: part of the upgrade is live.
    let out = helm.run(&["upgrade", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT, "--set", "replicaCount=4,config.data.greeting=bonjour"]);
    let _ = Command::new("kubectl").args(["delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", &format!("{n}-max-replicas")]).output();
    assert!(!out.status.success(), "the denied upgrade fails");
    let (_, doc) = diagnose("app", n, &[]);
    assert_eq!(cause(&doc), "AdmissionDenied", "{doc:#}");
    assert!(evidence(&doc).contains("replicas must be at most 3 (platform policy)"), "{}", evidence(&doc));
    let partial = finding(&doc, "PartialUpgrade").unwrap_or_else(|| panic!("no PartialUpgrade: {doc:#}"));
    let states: Vec<String> = partial["resources"].as_array().unwrap().iter().map(|r| format!("{}/{}: {}", r["kind"].as_str().unwrap(), r["name"].as_str().unwrap(), r["state"].as_str().unwrap())).collect();
    assert_eq!(states, ["ConfigMap/app-fullstack: failed", "Deployment/app-fullstack: reference"], "{partial:#}");
    assert!(partial["hint"].as_str().unwrap().starts_with(&format!("helm rollback app 1 -n {n}")), "{partial:#}");
}

#[tokio::test]
async fn helm3_an_admission_policy_that_denies_part_of_an_upgrade() {
    admission_denied(Helm::V3).await;
}

#[tokio::test]
async fn helm4_an_admission_policy_that_denies_part_of_an_upgrade() {
    admission_denied(Helm::V4).await;
}

async fn quota(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("health-quota-{}", helm.short())).await;
    let n = ns.name.as_str();
    kubectl(&["create", "quota", "pods", "-n", n, "--hard=pods=2"]);
    helm.ok(&["install", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT, "--wait", "--timeout", "120s"]);
    let out = helm.run(&["upgrade", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT, "--set", "replicaCount=4", "--wait", "--timeout", "30s"]);
    assert!(!out.status.success(), "the upgrade past the quota fails");
    let (_, doc) = diagnose("app", n, &[]);
    assert_eq!(cause(&doc), "QuotaExceeded", "{doc:#}");
    assert!(evidence(&doc).contains("exceeded quota: pods"), "{}", evidence(&doc));
    assert!(doc["next"].as_array().unwrap().iter().any(|c| c == &format!("kubectl describe resourcequota -n {n}")), "{doc:#}");
}

#[tokio::test]
async fn helm3_an_upgrade_past_the_quota_is_quota_exceeded() {
    quota(Helm::V3).await;
}

#[tokio::test]
async fn helm4_an_upgrade_past_the_quota_is_quota_exceeded() {
    quota(Helm::V4).await;
}

// --- a stuck pending-upgrade, and unlock ---------------------------------------------------

fn record_labels(n: &str, driver: &str, rev: u32) -> Value {
    let kind = if driver == "configmap" { "configmap" } else { "secret" };
    let out = kubectl(&["get", kind, &format!("sh.helm.release.v1.app.v{rev}"), "-n", n, "-o", "json"]);
    serde_json::from_str::<Value>(&out).unwrap()["metadata"]["labels"].clone()
}

async fn stuck(helm: Helm, driver: &str) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("health-stuck-{}-{}", helm.short(), &driver[..3])).await;
    let n = ns.name.as_str();
    let env = [("HELM_DRIVER", driver)];
    helm.ok_env(&["install", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT], &env);
    let _ctl = controller(n, "pendingTimeout: 10s");
    wait_for("the first report", 60, || report(n, "app").filter(|r| condition(r, "Ready").is_some_and(|c| c["status"] == "True")));
    // helm upgrade --wait, killed with SIGKILL once its revision is pending: the lock stays.
    let mut upgrade = Command::new(helm.binary())
        .args(["upgrade", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT, "--set", &format!("image.repository={UNPULLABLE}"), "--wait", "--timeout", "300s"])
        .env("HELM_DRIVER", driver)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("revision 2 pending-upgrade", 60, || {
        let out = Command::new("kubectl").args(["get", if driver == "configmap" { "configmap" } else { "secret" }, "sh.helm.release.v1.app.v2", "-n", n, "-o", "jsonpath={.metadata.labels.status}"]).output().unwrap();
        (String::from_utf8_lossy(&out.stdout) == "pending-upgrade").then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    upgrade.kill().unwrap();
    upgrade.wait().unwrap();
    // Too young to unlock without --force.
    let out = driftwatch(&["unlock", "app", "-n", n, "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("less than the pending timeout (10s)"), "{}", String::from_utf8_lossy(&out.stderr));

    // Past the policy's pendingTimeout: StuckPending, with the lock's consequence.
    let f = wait_for("StuckPending in the report", 90, || report_finding(n, "StuckPending"));
    assert!(f["message"].as_str().unwrap().contains("revision 2 has been pending-upgrade"), "{f}");
    assert!(f["hint"].as_str().unwrap().contains(&format!("driftwatch unlock app -n {n}")), "{f}");
    let r = report(n, "app").unwrap();
    assert_eq!(condition(&r, "ReleaseHealthy").unwrap()["reason"], "StuckPending");
    let (_, doc) = diagnose("app", n, &[]);
    assert_eq!(kinds(&doc), ["StuckPending"], "{doc:#}");
    let blocked = helm.run_env(&["upgrade", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT], &env);
    assert!(!blocked.status.success());
    assert!(String::from_utf8_lossy(&blocked.stderr).contains("another operation (install/upgrade/rollback) is in progress"), "{}", String::from_utf8_lossy(&blocked.stderr));

    // Without --yes: what it would do, and nothing changes.
    let out = driftwatch(&["unlock", "app", "-n", n]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Would mark revision 2"), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(record_labels(n, driver, 2)["status"], "pending-upgrade");
    let out = driftwatch(&["unlock", "app", "-n", n, "--yes"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(record_labels(n, driver, 2)["status"], "failed");

    // The same upgrade now runs; helm history shows the unlocked revision as failed, with ours.
    helm.ok_env(&["upgrade", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT], &env);
    let history: Value = serde_json::from_str(&helm.ok_env(&["history", "app", "-n", n, "-o", "json"], &env)).unwrap();
    let two = &history.as_array().unwrap()[1];
    assert_eq!(two["status"], "failed");
    assert!(two["description"].as_str().unwrap().starts_with("Unlocked by "), "{two}");
    assert!(two["description"].as_str().unwrap().contains("was pending-upgrade"), "{two}");
    assert_eq!(history.as_array().unwrap()[2]["status"], "deployed");
    wait_for("the report healthy again", 60, || report(n, "app").filter(|r| condition(r, "ReleaseHealthy").is_some_and(|c| c["status"] == "True")));
}

#[tokio::test]
async fn helm3_a_killed_upgrade_is_stuck_pending_and_unlock_frees_it() {
    stuck(Helm::V3, "secret").await;
}

#[tokio::test]
async fn helm4_a_killed_upgrade_is_stuck_pending_and_unlock_frees_it() {
    stuck(Helm::V4, "secret").await;
}

#[tokio::test]
async fn helm3_configmap_driver_a_killed_upgrade_is_unlocked() {
    stuck(Helm::V3, "configmap").await;
}

#[tokio::test]
async fn helm4_configmap_driver_a_killed_upgrade_is_unlocked() {
    stuck(Helm::V4, "configmap").await;
}

// --- every record deleted ------------------------------------------------------------------

async fn lost_records(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("health-lost-{}", helm.short())).await;
    let n = ns.name.as_str();
    let set = "statefulset.enabled=false,cache.enabled=false,widget.enabled=false,hookJob.enabled=false";
    helm.ok(&["install", "app", &common::chart("fullstack"), "-n", n, "--set", set]);
    let _ctl = controller(n, "pendingTimeout: 15m");
    wait_for("the first report", 60, || report(n, "app").filter(|r| condition(r, "Ready").is_some_and(|c| c["status"] == "True")));
    // The "cleanup script": every release Secret deleted.
    kubectl(&["delete", "secret", "-n", n, "-l", "owner=helm,name=app"]);
    assert!(helm.ok(&["list", "-n", n, "-q"]).trim().is_empty(), "helm list shows nothing");
    let f = wait_for("LostRecords in the report", 60, || report_finding(n, "LostRecords"));
    let objects: Vec<String> = f["resources"].as_array().unwrap().iter().map(|r| format!("{}/{}", r["kind"].as_str().unwrap(), r["name"].as_str().unwrap())).collect();
    for o in ["Deployment/app-fullstack", "Service/app-fullstack", "ConfigMap/app-fullstack"] {
        assert!(objects.contains(&o.to_string()), "{o} not in {objects:?}");
    }
    let hint = f["hint"].as_str().unwrap();
    assert!(hint.starts_with(&format!("helm upgrade --install app CHART -n {n}")), "{hint}");
    let r = report(n, "app").unwrap();
    assert_eq!(condition(&r, "ReleaseHealthy").unwrap()["reason"], "LostRecords");
    let (code, doc) = diagnose("app", n, &[]);
    assert_eq!(code, 0);
    assert_eq!(kinds(&doc), ["LostRecords"], "{doc:#}");
    // The printed command adopts them back; the finding clears.
    helm.ok(&["upgrade", "--install", "app", &common::chart("fullstack"), "-n", n, "--set", set]);
    let r = wait_for("the report healthy again", 60, || report(n, "app").filter(|r| condition(r, "ReleaseHealthy").is_some_and(|c| c["status"] == "True")));
    assert!(r["status"]["findings"].as_array().is_none_or(|a| a.is_empty()), "{}", r["status"]);
    // helm uninstall deletes the objects, then the records: gone, not lost.
    helm.ok(&["uninstall", "app", "-n", n]);
    wait_for("the report deleted", 60, || report(n, "app").is_none().then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    assert!(report(n, "app").is_none(), "an uninstalled release came back as a report");
    let events: Value = serde_json::from_str(&kubectl(&["get", "events", "-n", n, "--field-selector", "reason=ReleaseUnhealthy", "-o", "json"])).unwrap();
    let lost = events["items"].as_array().unwrap().iter().filter(|e| e["note"].as_str().or(e["message"].as_str()).is_some_and(|m| m.contains("no Helm record left"))).count();
    assert_eq!(lost, 1, "one LostRecords Event, for the deleted records, none for the uninstall: {events:#}");
}

#[tokio::test]
async fn helm3_deleted_records_are_lost_records_and_adopted_back() {
    lost_records(Helm::V3).await;
}

#[tokio::test]
async fn helm4_deleted_records_are_lost_records_and_adopted_back() {
    lost_records(Helm::V4).await;
}

// --- orphaned objects and a stale release --------------------------------------------------

async fn orphans_and_stale(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("health-orphan-{}", helm.short())).await;
    let n = ns.name.as_str();
    helm.ok(&["install", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT]);
    let log = format!("{}/controller-{n}.log", std::env::temp_dir().display());
    let _ctl = start_controller(n, n, &[n], &log);
    // Every release is stale after a second; a full pass every 3 s sees it.
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: p, namespace: {n}}}\nspec: {{interval: 3s, health: {{staleAfter: 1s}}}}\n"));
    let stale = wait_for("Stale in the report", 60, || report_finding(n, "Stale"));
    assert!(stale["message"].as_str().unwrap().contains("longer than health.staleAfter"), "{stale}");
    let r = report(n, "app").unwrap();
    let healthy = condition(&r, "ReleaseHealthy").unwrap();
    assert_eq!((healthy["status"].as_str(), healthy["reason"].as_str()), (Some("True"), Some("Stale")), "an old release is not an unhealthy one: {healthy}");
    // An object stamped for the release that its manifest lacks (left by hand, or kept by
    // helm.sh/resource-policy: keep when a revision dropped it).
    kubectl(&["create", "configmap", "leftover", "-n", n, "--from-literal=a=b"]);
    kubectl(&["annotate", "configmap", "leftover", "-n", n, "meta.helm.sh/release-name=app", &format!("meta.helm.sh/release-namespace={n}")]);
    kubectl(&["label", "configmap", "leftover", "-n", n, "app.kubernetes.io/managed-by=Helm"]);
    let f = wait_for("OrphanedResources in the report", 60, || report_finding(n, "OrphanedResources"));
    let names: Vec<&str> = f["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["leftover"], "{f}");
    let r = report(n, "app").unwrap();
    assert_eq!(condition(&r, "ReleaseHealthy").unwrap()["reason"], "OrphanedResources");
    let (_, doc) = diagnose("app", n, &[]);
    assert_eq!(kinds(&doc), ["OrphanedResources", "Stale"], "{doc:#}");
    let (_, checked) = common::check("app", n, &["--policy", &format!("{n}/p")]);
    assert!(checked["findings"].as_array().unwrap().iter().any(|f| f["type"] == "Stale"), "{checked:#}");
    kubectl(&["delete", "configmap", "leftover", "-n", n]);
    wait_for("the orphan gone from the report", 60, || report(n, "app").filter(|r| condition(r, "ReleaseHealthy").is_some_and(|c| c["reason"] == "Stale")));
}

#[tokio::test]
async fn helm3_orphaned_objects_and_a_stale_release() {
    orphans_and_stale(Helm::V3).await;
}

#[tokio::test]
async fn helm4_orphaned_objects_and_a_stale_release() {
    orphans_and_stale(Helm::V4).await;
}
