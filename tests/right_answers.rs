//! Right answers only (issue 11), with the real helm v3 and v4 and drift made by the real
//! kubectl: a removed field names no manager (and the controller says when it first saw it),
//! Kubernetes' own controllers cause no drift (aggregated ClusterRoles, empty versus null),
//! rollout restarts and client-side apply stamps are actions, Secret digests are keyed, and
//! `check --policy` gives the report's answer. Then real public charts, vendored in
//! tests/charts/, install InSync and their drift is caught.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    ControllerProcess, Helm, TestNamespace, apply_yaml, check, condition, drift_shape, driftwatch, field, kubectl, not_in_sync, report, resource,
    start_controller, wait_for, wait_for_controllers,
};
use serde_json::Value;

fn text(args: &[&str]) -> String {
    let out = driftwatch(args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A controller watching one namespace, with a platform namespace of its own (where its digest
/// key lives), and the policy `p` in the watched namespace.
struct Watcher {
    platform: TestNamespace,
    ctl: Option<ControllerProcess>,
    watched: String,
    log: String,
}

impl Watcher {
    async fn new(client: &kube::Client, watched: &str, policy_spec: &str) -> Watcher {
        let platform = TestNamespace::new(client, &format!("{watched}-pf")).await;
        let log = format!("{}/controller-{watched}.log", std::env::temp_dir().display());
        let ctl = start_controller(&platform.name, &platform.name, &[watched], &log);
        set_policy(watched, policy_spec);
        Watcher { platform, ctl: Some(ctl), watched: watched.to_string(), log }
    }

    /// Stops the controller and starts another (a restart: same namespace, same key Secret).
    fn restart(&mut self) {
        drop(self.ctl.take());
        let log = format!("{}.restarted", self.log);
        self.ctl = Some(start_controller(&self.platform.name, &self.platform.name, &[&self.watched], &log));
    }
}

fn set_policy(ns: &str, spec: &str) {
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: p, namespace: {ns}}}\nspec:\n{spec}"));
}

fn report_field<'a>(r: &'a Value, kind: &str, name: &str, path: &str) -> Option<&'a Value> {
    r["status"]["resources"].as_array()?.iter().find(|o| o["kind"] == kind && o["name"] == name)?["fields"].as_array()?.iter().find(|f| f["path"] == path)
}

// 1. A removed field is credited to nobody.

async fn removal_names_no_manager(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("rm-{}", helm.short())).await;
    let n = ns.name.as_str();
    helm.ok(&["install", "app", &common::chart("fullstack"), "-n", n]);
    wait_for_controllers(n);
    let mut w = Watcher::new(&client, n, "  interval: 1m\n").await;
    wait_for("first report", 60, || report(n, "app").filter(|r| condition(r, "Drifted").is_some_and(|c| c["status"] == "False")));

    // Remove the metrics port, then two seconds later another manager writes the object.
    kubectl(&["patch", "deployment/app-fullstack", "-n", n, "--type=json", "-p", r#"[{"op":"remove","path":"/spec/template/spec/containers/0/ports/1"}]"#]);
    std::thread::sleep(Duration::from_secs(2));
    kubectl(&["label", "--overwrite", "deployment/app-fullstack", "-n", n, "oncall=paged"]);
    kubectl(&["scale", "deployment/app-fullstack", "-n", n, "--replicas=3"]);
    let port_path = "/spec/template/spec/containers/0/ports/1";

    // The CLI: no manager, the writers since the deploy as candidates, and it says so.
    let (code, cli) = check("app", n, &[]);
    assert_eq!(code, 2);
    let deploy = resource(&cli, "Deployment", "app-fullstack");
    let port = field(deploy, port_path);
    assert_eq!(port["change"], "Removed");
    assert!(port.get("manager").is_none() && port.get("time").is_none(), "no manager may be named for a removed field: {port}");
    let candidates: Vec<&str> = port["candidates"].as_array().map(|c| c.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    assert!(candidates.contains(&"kubectl-label"), "the later writer is a candidate, labelled as such: {port}");
    assert!(port.get("seen").is_none(), "the CLI looks once: it has no `seen`");
    let scale = field(deploy, "/spec/replicas");
    assert_eq!((scale["manager"].as_str(), scale["subresource"].as_str()), (Some("kubectl"), Some("scale")), "{scale}");
    let shown = text(&["check", "app", "-n", n]);
    assert!(shown.contains(&format!("- {port_path}:")) && shown.contains("by unknown — Kubernetes records no owner for removed fields"), "{shown}");
    assert!(shown.contains("candidates, not a record"), "{shown}");
    assert!(shown.contains("by kubectl (Update via scale"), "{shown}");
    assert!(!shown.contains(&format!("{port_path}: {{\"containerPort\":9090,\"name\":\"metrics\",\"protocol\":\"TCP\"}} (removed live)  by kubectl-label")));

    // The controller: the same, plus when its watch first saw each field drift.
    let r = wait_for("the report to show the removal", 60, || {
        let r = report(n, "app")?;
        let ok = report_field(&r, "Deployment", "app-fullstack", port_path).is_some() && report_field(&r, "Deployment", "app-fullstack", "/spec/replicas").is_some();
        ok.then_some(r)
    });
    let port = report_field(&r, "Deployment", "app-fullstack", port_path).unwrap().clone();
    assert!(port.get("manager").is_none(), "{port}");
    let seen = port["seen"].as_str().unwrap_or_else(|| panic!("no seen: {port}")).to_string();
    seen.parse::<jiff::Timestamp>().expect("seen is RFC 3339");
    let scale_seen = report_field(&r, "Deployment", "app-fullstack", "/spec/replicas").unwrap()["seen"].as_str().unwrap().to_string();
    let message = condition(&r, "Drifted").unwrap()["message"].as_str().unwrap().to_string();
    assert!(message.contains("Deployment/app-fullstack") && message.contains("first seen"), "{message}");

    // Kept across a re-check caused by another change, and across a restart.
    kubectl(&["patch", "configmap/app-fullstack", "-n", n, "--type=merge", "-p", r#"{"data":{"greeting":"hello by hand"}}"#]);
    let r = wait_for("the report to show the second change", 60, || {
        let r = report(n, "app")?;
        report_field(&r, "ConfigMap", "app-fullstack", "/data/greeting").is_some().then_some(r)
    });
    assert_eq!(report_field(&r, "Deployment", "app-fullstack", port_path).unwrap()["seen"], seen.as_str(), "kept across re-checks");
    let later = report_field(&r, "ConfigMap", "app-fullstack", "/data/greeting").unwrap()["seen"].as_str().unwrap().to_string();
    assert!(later >= seen, "{later} < {seen}");
    w.restart();
    kubectl(&["annotate", "--overwrite", "configmap/app-fullstack", "-n", n, "touched=after-restart"]);
    let r = wait_for("the restarted controller's report", 60, || {
        let r = report(n, "app")?;
        report_field(&r, "ConfigMap", "app-fullstack", "/metadata/annotations/touched").is_some().then_some(r)
    });
    assert_eq!(report_field(&r, "Deployment", "app-fullstack", port_path).unwrap()["seen"], seen.as_str(), "kept across a restart");
    assert_eq!(report_field(&r, "Deployment", "app-fullstack", "/spec/replicas").unwrap()["seen"], scale_seen.as_str());
}

#[tokio::test]
async fn helm3_removal_names_no_manager() {
    removal_names_no_manager(Helm::V3).await;
}

#[tokio::test]
async fn helm4_removal_names_no_manager() {
    removal_names_no_manager(Helm::V4).await;
}

// 2. Kubernetes' own controllers.

/// Waits until the clusterrole-aggregation controller has filled the release's aggregated role.
fn wait_for_aggregation(ns: &str, release: &str) {
    let name = format!("{ns}-{release}-aggregated");
    wait_for("the aggregated ClusterRole's rules", 60, || {
        let rules = kubectl(&["get", "clusterrole", &name, "-o", "jsonpath={.rules}"]);
        rules.contains("configmaps").then_some(())
    });
}

async fn aggregated_cluster_roles(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("agg-{}", helm.short())).await;
    let n = ns.name.as_str();
    for (release, shape, other) in [("omitted", "omitted", "empty"), ("empty", "empty", "omitted")] {
        helm.ok(&["install", release, &common::chart("rbac-aggregate"), "-n", n, "--set", &format!("rulesShape={shape}")]);
        wait_for_aggregation(n, release);
        for extra in [&[][..], &["--no-confirm"][..]] {
            let (code, r) = check(release, n, extra);
            assert_eq!(not_in_sync(&r), Vec::<String>::new(), "{release} {extra:?}: aggregated rules and `rules: []` versus null are not drift");
            assert_eq!(code, 0);
        }
        let (set, chart) = (format!("rulesShape={other}"), common::chart("rbac-aggregate"));
        let mut upgrade = vec!["upgrade", release, chart.as_str(), "-n", n, "--set", set.as_str()];
        if helm == Helm::V4 && other == "empty" {
            // Helm 4 applies server-side: `rules: []` conflicts with the aggregation
            // controller's ownership of .rules, and only a forced apply goes through.
            upgrade.push("--force-conflicts");
        }
        helm.ok(&upgrade);
        wait_for_aggregation(n, release);
        let (_, r) = check(release, n, &["--no-confirm"]);
        assert_eq!(not_in_sync(&r), Vec::<String>::new(), "{release} after an upgrade to {other}");
        // A person's change of a plain role's rules is still drift.
        kubectl(&["patch", "clusterrole", &format!("{n}-{release}-reader"), "--type=json", "-p", r#"[{"op":"add","path":"/rules/0/verbs/-","value":"delete"}]"#]);
        let (code, r) = check(release, n, &["--no-confirm"]);
        assert_eq!(code, 2);
        let reader = resource(&r, "ClusterRole", &format!("{n}-{release}-reader"));
        assert_eq!(reader["state"], "Modified", "{reader}");
        assert_eq!(field(reader, "/rules/0/verbs")["manager"], "kubectl-patch");
        helm.ok(&["uninstall", release, "-n", n]);
    }
}

#[tokio::test]
async fn helm3_aggregated_cluster_roles() {
    aggregated_cluster_roles(Helm::V3).await;
}

#[tokio::test]
async fn helm4_aggregated_cluster_roles() {
    aggregated_cluster_roles(Helm::V4).await;
}

// 3. Operational actions.

async fn operations_are_not_drift(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("ops-{}", helm.short())).await;
    let n = ns.name.as_str();
    helm.ok(&["install", "app", &common::chart("fullstack"), "-n", n]);
    wait_for_controllers(n);
    kubectl(&["rollout", "restart", "deployment/app-fullstack", "-n", n]);
    // Client-side apply of the object as it is: kubectl stamps last-applied-configuration.
    let cm = kubectl(&["get", "configmap/app-fullstack", "-n", n, "-o", "yaml"]);
    common::kubectl_stdin(&["apply", "-f", "-"], &cm);

    let (code, r) = check("app", n, &[]);
    assert_eq!((code, &r["drifted"]), (0, &Value::Bool(false)), "actions are not drift: {:?}", not_in_sync(&r));
    assert_eq!(r["summary"]["operations"], 2, "{}", r["summary"]);
    let restart = &resource(&r, "Deployment", "app-fullstack")["operations"][0];
    assert_eq!((restart["action"].as_str(), restart["manager"].as_str()), (Some("Restarted"), Some("kubectl-rollout")), "{restart}");
    let applied = &resource(&r, "ConfigMap", "app-fullstack")["operations"][0];
    assert_eq!(applied["action"], "ClientSideApplied", "{applied}");
    let shown = text(&["check", "app", "-n", n]);
    assert!(shown.contains("IN SYNC") && shown.contains("Deployment") && shown.contains("restarted by kubectl-rollout at "), "{shown}");
    assert!(shown.contains("client-side applied by kubectl-client-side-apply"), "{shown}");

    // The switch counts them, and never prints the applied configuration.
    let (code, r) = check("app", n, &["--operations-as-drift"]);
    assert_eq!(code, 2);
    let deploy = resource(&r, "Deployment", "app-fullstack");
    assert_eq!(field(deploy, "/spec/template/metadata/annotations/kubectl.kubernetes.io~1restartedAt")["change"], "Added");
    let stamp = field(resource(&r, "ConfigMap", "app-fullstack"), "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration");
    assert!(stamp["live"].as_str().unwrap().starts_with("(client-side apply configuration"), "{stamp}");

    // The controller: not drift by default, listed apart; drift under operationsAsDrift.
    let _w = Watcher::new(&client, n, "  interval: 1m\n").await;
    let got = wait_for("an InSync report listing the actions", 60, || {
        let r = report(n, "app")?;
        (condition(&r, "Drifted")?["status"] == "False" && r["status"]["operations"].as_array()?.len() == 2).then_some(r)
    });
    assert_eq!(got["status"]["summary"]["operations"], 2);
    set_policy(n, "  interval: 1m\n  operationsAsDrift: true\n");
    wait_for("a Drifted report under operationsAsDrift", 60, || report(n, "app").filter(|r| condition(r, "Drifted").is_some_and(|c| c["status"] == "True")));
}

#[tokio::test]
async fn helm3_operations_are_not_drift() {
    operations_are_not_drift(Helm::V3).await;
}

#[tokio::test]
async fn helm4_operations_are_not_drift() {
    operations_are_not_drift(Helm::V4).await;
}

// 4. Keyed digests of Secret values.

#[tokio::test]
async fn secret_digests_are_keyed() {
    let client = common::client().await;
    let a = TestNamespace::new(&client, "digest-a").await;
    let b = TestNamespace::new(&client, "digest-b").await;
    for ns in [&a.name, &b.name] {
        Helm::V4.ok(&["install", "app", &common::chart("fullstack"), "-n", ns]);
        // Two keys set to one value: equal values show equal digests within one report.
        kubectl(&["patch", "secret/app-fullstack", "-n", ns, "--type=merge", "-p", r#"{"stringData":{"password":"same-by-hand","username":"same-by-hand"}}"#]);
    }
    let digests = |r: &Value| -> (String, String) {
        let s = resource(r, "Secret", "app-fullstack");
        (field(s, "/data/password")["live"].as_str().unwrap().to_string(), field(s, "/data/username")["live"].as_str().unwrap().to_string())
    };
    let (_, first) = check("app", &a.name, &[]);
    let (_, second) = check("app", &a.name, &[]);
    let (p1, u1) = digests(&first);
    let (p2, _) = digests(&second);
    assert!(p1.starts_with("(redacted, hmac:"), "{p1}");
    assert_eq!(p1, u1, "equal values, equal digests within one run");
    assert_ne!(p1, p2, "each run of the CLI has its own key: its digests cannot be compared with another's");
    assert!(!first.to_string().contains("same-by-hand"));

    // Two controllers with their own namespaces stand for two clusters: each keeps its key.
    let mut wa = Watcher::new(&client, &a.name, "  interval: 1m\n").await;
    let wb = Watcher::new(&client, &b.name, "  interval: 1m\n").await;
    let report_digest = |ns: &str| {
        wait_for("a report with the Secret's drift", 60, || {
            let r = report(ns, "app")?;
            let p = report_field(&r, "Secret", "app-fullstack", "/data/password")?["live"].as_str()?.to_string();
            let u = report_field(&r, "Secret", "app-fullstack", "/data/username")?["live"].as_str()?.to_string();
            Some((p, u))
        })
    };
    let (pa, ua) = report_digest(&a.name);
    let (pb, _) = report_digest(&b.name);
    assert_eq!(pa, ua, "equal values, equal digests within one cluster");
    assert_ne!(pa, pb, "another cluster's key, another digest");
    let key = kubectl(&["get", "secret", "driftwatch-digest-key", "-n", &wa.platform.name, "-o", "jsonpath={.data.key}"]);
    assert!(key.len() >= 40, "the key Secret is made on first start: {key:?}");
    // Stable across a restart: the key is read back, not made again.
    wa.restart();
    kubectl(&["patch", "secret/app-fullstack", "-n", &a.name, "--type=merge", "-p", r#"{"stringData":{"username":"other-by-hand"}}"#]);
    let (pa2, ua2) = wait_for("the restarted controller's digests", 60, || {
        let (p, u) = report_digest(&a.name);
        (u != ua).then_some((p, u))
    });
    assert_eq!(pa2, pa, "the same key after a restart");
    assert_ne!(ua2, pa2);
    assert_eq!(kubectl(&["get", "secret", "driftwatch-digest-key", "-n", &wa.platform.name, "-o", "jsonpath={.data.key}"]), key);
    for log in [&wa.log, &wb.log] {
        let logged = std::fs::read_to_string(log).unwrap_or_default();
        assert!(!logged.contains(&key) && !logged.contains("same-by-hand"), "no key and no Secret value in the logs");
    }
}

// 5. The CLI and the controller agree.

#[tokio::test]
async fn check_policy_equals_the_report() {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, "cli-policy").await;
    let n = ns.name.as_str();
    Helm::V3.ok(&["install", "app", &common::chart("fullstack"), "-n", n]);
    wait_for_controllers(n);
    let spec = "  interval: 1m\n  ignore:\n    - paths: [\"/spec/replicas\"]\n      target: {kind: Deployment}\n  ignoreManagers: [hotfix]\n";
    let _w = Watcher::new(&client, n, spec).await;
    wait_for("first report", 60, || report(n, "app").filter(|r| condition(r, "Ready").is_some()));
    kubectl(&["scale", "deployment/app-fullstack", "-n", n, "--replicas=4"]);
    kubectl(&["label", "--overwrite", "service/app-fullstack", "-n", n, "app.kubernetes.io/version=0"]);
    kubectl(&["patch", "configmap/app-fullstack", "-n", n, "--type=json", "-p", r#"[{"op":"remove","path":"/data/greeting"}]"#]);
    let hotfix = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-fullstack\n  namespace: {n}\ndata:\n  extra: from-hotfix\n");
    common::kubectl_stdin(&["apply", "--server-side", "--field-manager=hotfix", "-f", "-"], &hotfix);

    let policy = format!("{n}/p");
    // Without --policy: the covering policy is named, and said not to be applied.
    let (_, plain) = check("app", n, &[]);
    assert_eq!(plain["policy"], serde_json::json!({"name": policy, "applied": false}));
    assert!(field(resource(&plain, "Deployment", "app-fullstack"), "/spec/replicas").is_object(), "without the policy the scale shows");
    let shown = text(&["check", "app", "-n", n]);
    assert!(shown.contains(&format!("policy {policy} covers this release; its ignore rules were not applied")), "{shown}");
    // With it: the report's answer.
    let (_, with) = check("app", n, &["--policy", &policy]);
    assert_eq!(with["policy"], serde_json::json!({"name": policy, "applied": true}));
    let got = wait_for("the report and `check --policy` to agree", 60, || {
        let r = report(n, "app")?;
        (drift_shape(&r["status"]["resources"]) == drift_shape(&with["resources"]) && r["status"]["summary"] == with["summary"]).then_some(r)
    });
    assert_eq!(got["status"]["policy"], policy.as_str());
    assert_ne!(drift_shape(&plain["resources"]), drift_shape(&with["resources"]), "the policy hid the scale and the hotfix");
    // A policy that does not exist is an error, not a silent unfiltered check.
    let out = driftwatch(&["check", "app", "-n", n, "--policy", &format!("{n}/nope")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

// Real public charts.

fn install_in_sync(helm: Helm, release: &str, chart: &str, ns: &str, upgrade_set: &str) {
    helm.ok(&["install", release, &common::chart(chart), "-n", ns]);
    wait_for_controllers(ns);
    for extra in [&[][..], &["--no-confirm"][..]] {
        let (code, r) = check(release, ns, extra);
        assert_eq!(not_in_sync(&r), Vec::<String>::new(), "{chart} under {helm:?} {extra:?}: fresh install");
        assert_eq!(code, 0);
    }
    helm.ok(&["upgrade", release, &common::chart(chart), "-n", ns, "--set", upgrade_set]);
    wait_for_controllers(ns);
    let (code, r) = check(release, ns, &["--no-confirm"]);
    assert_eq!(not_in_sync(&r), Vec::<String>::new(), "{chart} under {helm:?}: after an upgrade");
    assert_eq!((code, r["revision"].as_u64()), (0, Some(2)));
}

async fn public_charts(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("public-{}", helm.short())).await;
    let n = ns.name.as_str();
    install_in_sync(helm, "pi", "podinfo", n, "replicaCount=2");
    // kube-state-metrics names its ClusterRole after the release: one name per helm.
    let ksm = format!("ksm-{}", helm.short());
    install_in_sync(helm, &ksm, "kube-state-metrics", n, "replicas=2");

    // The drift of the brief, on podinfo: each caught with path, change and manager.
    let d = "deployment/pi-podinfo";
    kubectl(&["scale", d, "-n", n, "--replicas=5"]);
    let edit = Command::new("kubectl").args(["edit", d, "-n", n]).env("KUBE_EDITOR", "sed -i s/memory:\\ 16Mi/memory:\\ 64Mi/").output().unwrap();
    assert!(edit.status.success(), "kubectl edit: {}", String::from_utf8_lossy(&edit.stderr));
    kubectl(&["set", "env", d, "-n", n, "LOG_LEVEL=debug"]);
    kubectl(&["patch", d, "-n", n, "--type=json", "-p", r#"[{"op":"remove","path":"/spec/template/spec/containers/0/ports/2"}]"#]);
    kubectl(&["label", "--overwrite", "service/pi-podinfo", "-n", n, "app.kubernetes.io/version=hand"]);
    let hotfix = format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: pi-podinfo\n  namespace: {n}\nspec:\n  ports:\n  - name: http\n    port: 9898\n    targetPort: 9999\n    protocol: TCP\n");
    common::kubectl_stdin(&["apply", "--server-side", "--field-manager=hotfix", "--force-conflicts", "-f", "-"], &hotfix);
    let ksm_name = format!("{ksm}-kube-state-metrics");
    kubectl(&["patch", &format!("clusterrole/{ksm_name}"), "--type=json", "-p", r#"[{"op":"remove","path":"/rules/0"}]"#]);
    kubectl(&["delete", &format!("service/{ksm_name}"), "-n", n]);

    let (code, r) = check("pi", n, &[]);
    assert_eq!(code, 2);
    let deploy = resource(&r, "Deployment", "pi-podinfo");
    let replicas = field(deploy, "/spec/replicas");
    assert_eq!((replicas["live"].as_i64(), replicas["manager"].as_str(), replicas["subresource"].as_str()), (Some(5), Some("kubectl"), Some("scale")));
    let mem = field(deploy, "/spec/template/spec/containers/0/resources/requests/memory");
    assert_eq!((mem["desired"].as_str(), mem["live"].as_str(), mem["manager"].as_str()), (Some("16Mi"), Some("64Mi"), Some("kubectl-edit")));
    let env = deploy["fields"].as_array().unwrap().iter().find(|f| f["change"] == "Added" && f["live"]["name"] == "LOG_LEVEL").unwrap_or_else(|| panic!("{deploy}"));
    assert_eq!(env["manager"], "kubectl-set");
    let port = field(deploy, "/spec/template/spec/containers/0/ports/2");
    assert_eq!(port["change"], "Removed");
    assert!(port.get("manager").is_none(), "{port}");
    let svc = resource(&r, "Service", "pi-podinfo");
    assert_eq!(field(svc, "/metadata/labels/app.kubernetes.io~1version")["manager"], "kubectl-label");
    let tp = field(svc, "/spec/ports/0/targetPort");
    assert_eq!((tp["manager"].as_str(), tp["operation"].as_str()), (Some("hotfix"), Some("Apply")));

    let (code, r) = check(&ksm, n, &[]);
    assert_eq!(code, 2);
    assert_eq!(resource(&r, "Service", &ksm_name)["state"], "Missing");
    let role = resource(&r, "ClusterRole", &ksm_name);
    assert_eq!(role["state"], "Modified", "{role}");
    assert_eq!(field(role, "/rules")["manager"], "kubectl-patch", "rules is an atomic list: owned whole by who wrote it last");
    helm.ok(&["uninstall", &ksm, "-n", n]);
}

#[tokio::test]
async fn helm3_public_charts() {
    public_charts(Helm::V3).await;
}

#[tokio::test]
async fn helm4_public_charts() {
    public_charts(Helm::V4).await;
}

/// Crossplane's chart ships six ClusterRoles with aggregationRule; its cluster-scoped names are
/// fixed, so the two helms take turns.
#[tokio::test]
async fn crossplane_chart_both_helms() {
    let client = common::client().await;
    // The aggregation controller can re-create an aggregated ClusterRole just deleted by an
    // uninstall (its queued server-side apply creates what is gone), leaving an empty,
    // unowned role that blocks the next install: clear the chart's fixed names first.
    let clear = || {
        let roles = ["crossplane", "crossplane-admin", "crossplane-edit", "crossplane-view", "crossplane-browse", "crossplane:allowed-provider-permissions"];
        let mut args = vec!["delete", "clusterrole", "--ignore-not-found"];
        args.extend(roles);
        kubectl(&args);
    };
    for helm in Helm::ALL {
        let ns = TestNamespace::new(&client, &format!("crossplane-{}", helm.short())).await;
        let n = ns.name.as_str();
        clear();
        helm.ok(&["install", "xp", &common::chart("crossplane"), "-n", n]);
        wait_for("aggregated rules", 60, || kubectl(&["get", "clusterrole", "crossplane-admin", "-o", "jsonpath={.rules}"]).contains("pkg.crossplane.io").then_some(()));
        wait_for_controllers(n);
        for extra in [&[][..], &["--no-confirm"][..]] {
            let (code, r) = check("xp", n, extra);
            assert_eq!(not_in_sync(&r), Vec::<String>::new(), "crossplane under {helm:?} {extra:?}");
            assert_eq!(code, 0);
        }
        helm.ok(&["upgrade", "xp", &common::chart("crossplane"), "-n", n, "--set", "replicas=2"]);
        wait_for_controllers(n);
        let (code, r) = check("xp", n, &["--no-confirm"]);
        assert_eq!((not_in_sync(&r), code), (Vec::<String>::new(), 0), "crossplane under {helm:?} after an upgrade");
        kubectl(&["set", "env", "deployment/crossplane", "-n", n, "-c", "crossplane", "DEBUG=1"]);
        kubectl(&["rollout", "restart", "deployment/crossplane-rbac-manager", "-n", n]);
        kubectl(&["patch", "secret/crossplane-root-ca", "-n", n, "--type=merge", "-p", r#"{"stringData":{"tls.key":"pasted-by-hand"}}"#]);
        let (code, r) = check("xp", n, &[]);
        assert_eq!(code, 2);
        let added = resource(&r, "Deployment", "crossplane")["fields"].as_array().unwrap().iter().any(|f| f["live"]["name"] == "DEBUG" && f["manager"] == "kubectl-set");
        assert!(added, "{}", resource(&r, "Deployment", "crossplane"));
        let rbac = resource(&r, "Deployment", "crossplane-rbac-manager");
        assert_eq!((rbac["state"].as_str(), rbac["operations"][0]["action"].as_str()), (Some("InSync"), Some("Restarted")), "{rbac}");
        let key = field(resource(&r, "Secret", "crossplane-root-ca"), "/data/tls.key");
        assert_eq!((key["change"].as_str(), key["manager"].as_str()), (Some("Added"), Some("kubectl-patch")), "{key}");
        assert!(key["live"].as_str().unwrap().starts_with("(redacted, hmac:") && !r.to_string().contains("pasted-by-hand"));
        helm.ok(&["uninstall", "xp", "-n", n]);
        std::thread::sleep(Duration::from_secs(1));
        clear();
    }
}

/// The controller cannot start without its digest key: a missing namespace or an unusable key
/// Secret stops it with a message that says what to do, and nothing is written.
#[tokio::test]
async fn digest_key_problems_stop_the_controller_clearly() {
    let client = common::client().await;
    let run = |own_ns: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
            .args(["run", "--metrics-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0", "--watch-namespaces", own_ns])
            .env("POD_NAMESPACE", own_ns)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run("no-such-namespace-for-driftwatch");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("namespace no-such-namespace-for-driftwatch does not exist") && err.contains("POD_NAMESPACE"), "{err}");

    let ns = TestNamespace::new(&client, "bad-key").await;
    kubectl(&["create", "secret", "generic", "driftwatch-digest-key", "-n", &ns.name, "--from-literal=key=short"]);
    let (code, err) = run(&ns.name);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("has no usable `key`") && err.contains("delete it to have a new key made"), "{err}");
    assert!(!err.contains("short"), "the key's value is never printed: {err}");
}
