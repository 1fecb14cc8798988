//! `driftwatch check` against real releases made by real helm v3 and v4, with drift made by
//! real kubectl: no false alarms on fresh, upgraded and rolled-back releases; every common
//! drift pattern caught with who made it; ignore rules; bad input reported per object.

mod common;

use std::process::Command;

use common::{Helm, TestNamespace, check, driftwatch, field, kubectl, not_in_sync, resource, wait_for_controllers};
use serde_json::Value;

fn assert_in_sync(release: &str, ns: &str, what: &str) {
    let (code, report) = check(release, ns, &[]);
    assert_eq!(not_in_sync(&report), Vec::<String>::new(), "{what}: expected every object InSync");
    assert_eq!(report["drifted"], false, "{what}");
    assert_eq!(code, 0, "{what}");
    assert!(report["summary"]["resources"].as_u64().unwrap() >= 5, "{what}: {}", report["summary"]);
}

async fn no_false_alarms(helm: Helm) {
    let client = common::client().await;
    let chart = common::chart("fullstack");
    // Node ports are allocated cluster-wide: one per Helm major, as the tests run in parallel.
    let node_port = match helm {
        Helm::V3 => 30777,
        Helm::V4 => 30778,
    };
    let configs: [String; 3] = [
        String::new(),
        format!("autoscaling.enabled=true,nodePortService.nodePort={node_port},pdb.minAvailable=50%"),
        "web.sidecar.enabled=false,statefulset.enabled=false,cache.enabled=false,rbac.enabled=false,secret.enabled=false".into(),
    ];
    for (i, values) in configs.iter().enumerate() {
        let ns = TestNamespace::new(&client, &format!("nofalse-{}-{i}", helm.short())).await;
        let mut args = vec!["install", "app", &chart, "-n", &ns.name];
        if !values.is_empty() {
            args.extend_from_slice(&["--set", values]);
        }
        helm.ok(&args);
        wait_for_controllers(&ns.name);
        assert_in_sync("app", &ns.name, &format!("{helm:?} config {i} fresh install"));
        if i == 0 {
            helm.ok(&["upgrade", "app", &chart, "-n", &ns.name, "--set", "replicaCount=4,web.env.LOG_LEVEL=debug,image.tag=2.5.0,config.data.greeting=hi"]);
            wait_for_controllers(&ns.name);
            assert_in_sync("app", &ns.name, &format!("{helm:?} after upgrade"));
            helm.ok(&["rollback", "app", "1", "-n", &ns.name]);
            wait_for_controllers(&ns.name);
            assert_in_sync("app", &ns.name, &format!("{helm:?} after rollback"));
        }
    }
}

#[tokio::test]
async fn helm3_no_false_alarms() {
    no_false_alarms(Helm::V3).await;
}

#[tokio::test]
async fn helm4_no_false_alarms() {
    no_false_alarms(Helm::V4).await;
}

/// Every common drift pattern, in one release, with attribution.
async fn drift_patterns(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("patterns-{}", helm.short())).await;
    let n = ns.name.as_str();
    helm.ok(&["install", "app", &common::chart("fullstack"), "-n", n]);
    wait_for_controllers(n);
    assert_in_sync("app", n, "before drift");

    let edit = Command::new("kubectl")
        .args(["edit", "deployment/app-fullstack", "-n", n])
        .env("KUBE_EDITOR", "sed -i s/memory:\\ 512Mi/memory:\\ 1Gi/")
        .output()
        .unwrap();
    assert!(edit.status.success(), "kubectl edit: {}", String::from_utf8_lossy(&edit.stderr));
    kubectl(&["scale", "deployment/app-fullstack", "-n", n, "--replicas=5"]);
    kubectl(&["patch", "deployment/app-fullstack", "-n", n, "--type=strategic", "-p",
        r#"{"metadata":{"annotations":{"oncall/note":"raised memory"}},"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"DEBUG","value":"true"}]}]}}}}"#]);
    kubectl(&["label", "--overwrite", "service/app-fullstack", "-n", n, "app.kubernetes.io/version=9.9.9"]);
    kubectl(&["patch", "configmap/app-fullstack", "-n", n, "--type=json", "-p", r#"[{"op":"remove","path":"/data/greeting"}]"#]);
    kubectl(&["delete", "configmap/app-cache-config", "-n", n]);
    kubectl(&["patch", "secret/app-fullstack", "-n", n, "--type=merge", "-p", r#"{"stringData":{"password":"changed-by-hand"}}"#]);
    kubectl(&["patch", "widget/app-fullstack", "-n", n, "--type=merge", "-p", r#"{"spec":{"color":"red"}}"#]);
    let hotfix = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: app-fullstack-nodeport\n  namespace: {n}\nspec:\n  ports:\n  - name: http\n    port: 80\n    targetPort: 9090\n    protocol: TCP\n"
    );
    common::kubectl_stdin(&["apply", "--server-side", "--field-manager=hotfix", "--force-conflicts", "-f", "-"], &hotfix);

    let (code, report) = check("app", n, &[]);
    assert_eq!(code, 2, "--detailed-exitcode with drift");
    assert_eq!(report["drifted"], true);

    let deploy = resource(&report, "Deployment", "app-fullstack");
    assert_eq!(deploy["state"], "Modified");
    let mem = field(deploy, "/spec/template/spec/containers/0/resources/limits/memory");
    assert_eq!((mem["desired"].as_str(), mem["live"].as_str(), mem["change"].as_str()), (Some("512Mi"), Some("1Gi"), Some("Modified")));
    assert_eq!(mem["manager"], "kubectl-edit");
    assert!(mem["time"].is_string());
    let replicas = field(deploy, "/spec/replicas");
    assert_eq!((replicas["desired"].as_i64(), replicas["live"].as_i64()), (Some(2), Some(5)));
    assert_eq!(replicas["manager"], "kubectl");
    let added: Vec<&Value> = deploy["fields"].as_array().unwrap().iter().filter(|f| f["change"] == "Added").collect();
    let added_paths: Vec<&str> = added.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(added_paths.contains(&"/metadata/annotations/oncall~1note"), "{added_paths:?}");
    let env = added.iter().find(|f| f["live"]["name"] == "DEBUG").unwrap_or_else(|| panic!("no added env var: {added_paths:?}"));
    assert!(env["path"].as_str().unwrap().starts_with("/spec/template/spec/containers/0/env/"));
    assert_eq!(env["manager"], "kubectl-patch");

    let svc = resource(&report, "Service", "app-fullstack");
    let label = field(svc, "/metadata/labels/app.kubernetes.io~1version");
    assert_eq!((label["desired"].as_str(), label["live"].as_str()), (Some("2.4.1"), Some("9.9.9")));
    assert_eq!(label["manager"], "kubectl-label");

    let cm = resource(&report, "ConfigMap", "app-fullstack");
    let removed = field(cm, "/data/greeting");
    assert_eq!(removed["change"], "Removed");
    // A removal leaves no managedFields entry behind when the remover owns nothing else:
    // Kubernetes does not know who did it, and the report says nobody rather than guess.

    assert_eq!(resource(&report, "ConfigMap", "app-cache-config")["state"], "Missing");

    let secret = resource(&report, "Secret", "app-fullstack");
    let pw = field(secret, "/data/password");
    assert_eq!(pw["change"], "Modified");
    for v in [&pw["desired"], &pw["live"]] {
        assert!(v.as_str().unwrap().starts_with("(redacted, hmac:"), "{v}");
    }
    let text = report.to_string();
    assert!(!text.contains("not-a-real-password") && !text.contains("changed-by-hand"), "a Secret value leaked");

    let widget = resource(&report, "Widget", "app-fullstack");
    let color = field(widget, "/spec/color");
    assert_eq!((color["desired"].as_str(), color["live"].as_str()), (Some("blue"), Some("red")));

    let np = resource(&report, "Service", "app-fullstack-nodeport");
    let tp = field(np, "/spec/ports/0/targetPort");
    assert_eq!((tp["desired"].as_i64(), tp["live"].as_i64()), (Some(8080), Some(9090)));
    assert_eq!(tp["manager"], "hotfix");
    assert_eq!(tp["operation"], "Apply");

    // Everything else is still InSync.
    assert_eq!(resource(&report, "StatefulSet", "app-fullstack-db")["state"], "InSync");
    assert_eq!(report["summary"]["missing"], 1);

    // Ignore rules: /spec/replicas for Deployments hides the scale and nothing else.
    let (_, ignored) = check("app", n, &["--ignore-path", "Deployment:/spec/replicas"]);
    let deploy = resource(&ignored, "Deployment", "app-fullstack");
    let paths: Vec<&str> = deploy["fields"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(!paths.contains(&"/spec/replicas"), "{paths:?}");
    assert!(paths.contains(&"/spec/template/spec/containers/0/resources/limits/memory"), "{paths:?}");
    assert_eq!(ignored["summary"], report["summary"], "only a field was hidden, no object changed state");
    // ignoreManagers: the hotfix manager's change is not drift.
    let (_, ignored) = check("app", n, &["--ignore-manager", "hotfix"]);
    assert_eq!(resource(&ignored, "Service", "app-fullstack-nodeport")["state"], "InSync");
    assert_eq!(resource(&ignored, "Deployment", "app-fullstack")["state"], "Modified");

    // The text view names the change and who made it.
    let text = driftwatch(&["check", "app", "-n", n]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("~ /spec/template/spec/containers/0/resources/limits/memory: 512Mi -> 1Gi  by kubectl-edit"), "{text}");
    assert!(text.contains("ConfigMap") && text.contains("Missing"), "{text}");
    assert!(!text.contains("\x1b["), "no colour when not a terminal");
}

#[tokio::test]
async fn helm3_drift_patterns() {
    drift_patterns(Helm::V3).await;
}

#[tokio::test]
async fn helm4_drift_patterns() {
    drift_patterns(Helm::V4).await;
}

/// Sets a release record's `status` label, as Helm's storage does when it moves a revision.
fn relabel(ns: &str, release: &str, revision: u32, status: &str) {
    kubectl(&["label", "--overwrite", "secret", &format!("sh.helm.release.v1.{release}.v{revision}"), "-n", ns, &format!("status={status}")]);
}

/// The moment of an atomic upgrade's rollback, made with the records Helm writes: revision 1
/// deployed, revision 2 failed with its objects applied, revision 3 (revision 1's manifest)
/// pending-rollback. The objects are at revision 2 and moving to 3: Helm's work, not drift. A
/// value neither revision sets still is drift.
async fn rollback_after_a_failed_upgrade(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("transit-{}", helm.short())).await;
    let n = ns.name.as_str();
    let chart = common::chart("fullstack");
    helm.ok(&["install", "app", &chart, "-n", n]);
    helm.ok(&["upgrade", "app", &chart, "-n", n, "--set", "replicaCount=3,config.data.greeting=bonjour"]);
    wait_for_controllers(n);
    relabel(n, "app", 1, "deployed");
    relabel(n, "app", 2, "failed");
    let mut rev3: Value = serde_json::from_str(&kubectl(&["get", "secret", "sh.helm.release.v1.app.v1", "-n", n, "-o", "json"])).unwrap();
    let labels = rev3["metadata"]["labels"].clone();
    rev3["metadata"] = serde_json::json!({"name": "sh.helm.release.v1.app.v3", "namespace": n, "labels": labels});
    rev3["metadata"]["labels"]["version"] = "3".into();
    rev3["metadata"]["labels"]["status"] = "pending-rollback".into();
    common::kubectl_stdin(&["create", "-f", "-"], &rev3.to_string());

    let (code, r) = check("app", n, &[]);
    assert_eq!(not_in_sync(&r), Vec::<String>::new(), "the failed revision's values, on their way back, are not drift");
    // Against the reference, revision 1 (Helm's rollback makes it superseded once it is done).
    assert_eq!((code, r["revision"].as_u64(), r["status"].as_str()), (0, Some(1), Some("deployed")), "{r}");
    let message = resource(&r, "Deployment", "app-fullstack")["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("revision 3 (pending-rollback) or 2 (failed)"), "{message}");

    kubectl(&["scale", "deployment/app-fullstack", "-n", n, "--replicas=7"]);
    let (code, r) = check("app", n, &[]);
    assert_eq!(code, 2, "{r}");
    let deployment = resource(&r, "Deployment", "app-fullstack");
    assert_eq!(field(deployment, "/spec/replicas")["live"], 7, "{deployment}");
    assert_eq!(not_in_sync(&r).len(), 1, "only the scale is drift: {:?}", not_in_sync(&r));
}

#[tokio::test]
async fn helm3_rollback_after_a_failed_upgrade() {
    rollback_after_a_failed_upgrade(Helm::V3).await;
}

#[tokio::test]
async fn helm4_rollback_after_a_failed_upgrade() {
    rollback_after_a_failed_upgrade(Helm::V4).await;
}

/// `check -n NS` reads a namespace's objects by LIST per kind (issue 18), not one GET per
/// object, and finds the same drift a per-object read does: every kind of change, each in its
/// release, nothing else; an object deleted after the listing is still Missing, an object that
/// is not in the listing is read by GET.
#[tokio::test]
async fn a_namespace_is_read_by_list() {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, "listed").await;
    let n = ns.name.as_str();
    let chart = common::chart("many");
    let releases = [("r1", Helm::V3), ("r2", Helm::V4), ("r3", Helm::V3), ("r4", Helm::V4)];
    for (name, helm) in releases {
        helm.ok(&["install", name, &chart, "-n", n, "--set", "apps=3,image=registry.example.com/app:1"]);
    }
    kubectl(&["scale", "deployment/r1-app-0", "-n", n, "--replicas=3"]);
    kubectl(&["patch", "configmap/r2-app-1", "-n", n, "--type=merge", "-p", r#"{"data":{"index":"9"}}"#]);
    kubectl(&["delete", "service/r3-app-2", "-n", n]);
    // Not Helm's: listed with the rest, never reported.
    kubectl(&["create", "configmap", "bystander", "-n", n, "--from-literal=a=b"]);

    let out = driftwatch(&["check", "-n", n, "-o", "json", "-v"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stderr}"));
    let reports = doc["releases"].as_array().unwrap();
    assert_eq!(reports.len(), 4, "{doc}");
    let shape = |name: &str| common::drift_shape(&reports.iter().find(|r| r["name"] == name).unwrap()["resources"]);
    assert_eq!(shape("r1"), vec![r#""Deployment" "r1-app-0" "Modified" ["\"/spec/replicas\":\"Modified\":\"kubectl\""]"#.to_string()]);
    assert_eq!(shape("r2"), vec![r#""ConfigMap" "r2-app-1" "Modified" ["\"/data/index\":\"Modified\":\"kubectl-patch\""]"#.to_string()]);
    assert_eq!(shape("r3"), vec![r#""Service" "r3-app-2" "Missing" []"#.to_string()]);
    assert_eq!(shape("r4"), Vec::<String>::new());
    for r in reports {
        assert_eq!(r["summary"]["resources"], 12, "{r}");
        assert_eq!(r["summary"]["errors"], 0, "{r}");
    }
    // Each single-release check (GET first, then the listing) says the same.
    for (name, _) in releases {
        let (_, single) = check(name, n, &[]);
        assert_eq!(common::drift_shape(&single["resources"]), shape(name), "{name}");
    }

    // 48 objects of 4 kinds: a GET and a LIST per kind, a GET for the deleted Service, two
    // discoveries, the OpenAPI index and two documents, two confirming dry-runs (per object it
    // was 48 reads and the rest).
    let line = stderr.lines().find(|l| l.contains("API requests")).unwrap_or_else(|| panic!("no request count: {stderr}"));
    let reads: usize = line.split(" for discovery").next().and_then(|p| p.rsplit(' ').next()?.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    assert!(reads <= 20, "live reads by LIST per kind, not per object: {reads} requests for 48 objects ({line})");
    eprintln!("check -n of 4 releases, 48 objects: {reads} requests for discovery, schemas, live reads and dry-runs");
}
