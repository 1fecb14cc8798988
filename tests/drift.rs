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
