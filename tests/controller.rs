//! `driftwatch run` as a process against the real control plane: policies yield one
//! DriftReport per release with the documented columns; a `kubectl edit` turns the report
//! Drifted (with a DriftDetected Event) and undoing it turns it back (DriftResolved); tenancy
//! and precedence; reports go away with their release; metrics follow.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ControllerProcess, Helm, TestNamespace, apply_yaml, condition, drift_shape, drifted, kubectl, metric, report, set_memory, start_controller, wait_for};
use serde_json::Value;

/// How many times an Event of this reason was emitted (repeats are folded into a series or a
/// count by the event recorder).
fn events(ns: &str, reason: &str) -> u64 {
    let out = kubectl(&["get", "events", "-n", ns, "--field-selector", &format!("reason={reason}"), "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["items"].as_array().unwrap().iter().map(|e| e["count"].as_u64().or_else(|| e["series"]["count"].as_u64()).unwrap_or(1).max(1)).sum()
}

#[tokio::test]
async fn reports_follow_drift_as_it_happens() {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, "ctl").await;
    let platform = TestNamespace::new(&client, "ctl-platform").await;
    let n = ns.name.as_str();
    Helm::V3.ok(&["install", "shop", &common::chart("fullstack"), "-n", n]);
    Helm::V4.ok(&["install", "blog", &common::chart("fullstack"), "-n", n, "--set", "widget.enabled=false,statefulset.enabled=false"]);
    let log = format!("{}/controller-{n}.log", std::env::temp_dir().display());
    let ctl = start_controller(&platform.name, &platform.name, &[n], &log);
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: team, namespace: {n}}}\nspec:\n  interval: 1m\n"));

    for rel in ["shop", "blog"] {
        let r = wait_for(&format!("report {rel} checked"), 60, || report(n, rel).filter(|r| condition(r, "Ready").is_some_and(|c| c["status"] == "True")));
        assert_eq!(drifted(&r), Some("False"), "{rel}: {}", r["status"]);
        assert_eq!(r["status"]["policy"], format!("{n}/team"));
        assert_eq!(r["status"]["drift"], "InSync");
    }
    // kubectl get driftreports shows the documented columns.
    let table = kubectl(&["get", "driftreports", "-n", n]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "REVISION", "CHART", "RELEASE", "DRIFT", "RESOURCES", "LAST", "CHECK", "AGE"], "{table}");
    assert!(table.lines().any(|l| l.starts_with("shop ") && l.contains("fullstack-1.0.0") && l.contains("deployed") && l.contains("InSync")), "{table}");
    let wide = kubectl(&["get", "driftreports", "-A"]);
    assert!(wide.starts_with("NAMESPACE"), "{wide}");

    // Drift as it happens: edit, wait for Drifted=True; undo, wait for Drifted=False.
    let mut latencies = Vec::new();
    for round in 0..10 {
        let t = Instant::now();
        set_memory(n, "shop-fullstack", "512Mi", "1Gi");
        wait_for("Drifted=True", 60, || report(n, "shop").filter(|r| drifted(r) == Some("True")));
        latencies.push(t.elapsed());
        if round == 0 {
            let r = report(n, "shop").unwrap();
            let res = &r["status"]["resources"][0];
            assert_eq!(res["kind"], "Deployment");
            assert_eq!(res["fields"][0]["manager"], "kubectl-edit");
            assert_eq!(condition(&r, "Drifted").unwrap()["reason"], "ResourcesModified");
            wait_for("DriftDetected event", 30, || (events(n, "DriftDetected") > 0).then_some(()));
            assert_eq!(metric(ctl.metrics_port, &format!("helm_drift_detected{{namespace=\"{n}\",release=\"shop\"}}")).as_deref(), Some("1"));
        }
        let t = Instant::now();
        set_memory(n, "shop-fullstack", "1Gi", "512Mi");
        wait_for("Drifted=False", 60, || report(n, "shop").filter(|r| drifted(r) == Some("False")));
        latencies.push(t.elapsed());
    }
    wait_for("DriftResolved event", 30, || (events(n, "DriftResolved") > 0).then_some(()));
    // A report's status is written whole (there is no status subresource): what the drift put
    // there goes when it ends.
    let r = report(n, "shop").unwrap();
    assert!(r["status"].get("firstDriftTime").is_none() && r["status"].get("resources").is_none(), "{}", r["status"]);
    assert_eq!(metric(ctl.metrics_port, &format!("helm_drift_detected{{namespace=\"{n}\",release=\"shop\"}}")).as_deref(), Some("0"));
    assert!(metric(ctl.metrics_port, &format!("helm_release_info{{app_version=\"2.4.1\",chart=\"fullstack\",chart_version=\"1.0.0\",namespace=\"{n}\",release=\"blog\",status=\"deployed\"}}")).is_some());
    let deployed = metric(ctl.metrics_port, &format!("helm_release_last_deployed_timestamp{{namespace=\"{n}\",release=\"shop\"}}")).unwrap();
    assert!(deployed.parse::<f64>().unwrap() > 1.7e9, "{deployed}");
    // --log-format json: every log line is a JSON object.
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.lines().count() > 0 && logs.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "{logs}");
    latencies.sort();
    let ms = |d: Duration| d.as_millis();
    eprintln!(
        "edit-to-status latency over {} edits: p50 {} ms, p99 {} ms, max {} ms",
        latencies.len(),
        ms(latencies[latencies.len() / 2]),
        ms(latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]),
        ms(*latencies.last().unwrap())
    );
    // Events on transitions, not on every check: the release was re-checked far more often
    // than it changed (every status write of kube-controller-manager re-checks it), yet there
    // is at most one Event per transition (Events are best-effort: one may be dropped).
    wait_for("DriftResolved event", 30, || (events(n, "DriftResolved") > 0).then_some(()));
    let (detected, resolved) = (events(n, "DriftDetected"), events(n, "DriftResolved"));
    assert!((1..=10).contains(&detected) && (1..=10).contains(&resolved), "DriftDetected {detected}, DriftResolved {resolved} for 10 transitions each");

    // The report goes when the release goes.
    Helm::V4.ok(&["uninstall", "blog", "-n", n]);
    wait_for("blog's report deleted", 60, || report(n, "blog").is_none().then_some(()));
    assert!(report(n, "shop").is_some());
}

#[tokio::test]
async fn tenancy_and_precedence() {
    let client = common::client().await;
    let tenant = TestNamespace::new(&client, "tenant").await;
    let other = TestNamespace::new(&client, "tenant-other").await;
    let platform = TestNamespace::new(&client, "tenancy-platform").await;
    let (t, o, p) = (tenant.name.as_str(), other.name.as_str(), platform.name.as_str());
    Helm::V3.ok(&["install", "app", &common::chart("fullstack"), "-n", t, "--set", "widget.enabled=false"]);
    Helm::V3.ok(&["install", "app", &common::chart("fullstack"), "-n", o, "--set", "widget.enabled=false"]);
    let log = format!("{}/controller-{t}.log", std::env::temp_dir().display());
    let _ctl = start_controller(p, p, &[t, o, p], &log);

    // A tenant policy reaching into another namespace is refused and reports nothing there.
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: grabby, namespace: {t}}}\nspec:\n  releaseSelector:\n    namespaces: [{o}]\n"));
    let dp = wait_for("CrossNamespaceDenied", 60, || {
        let out = Command::new("kubectl").args(["get", "driftpolicy", "grabby", "-n", t, "-o", "json"]).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let ready = v["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?.clone();
        (ready["reason"] == "CrossNamespaceDenied").then_some(ready)
    });
    assert_eq!(dp["status"], "False");
    assert!(dp["message"].as_str().unwrap().contains("selects releases outside its namespace"), "{dp}");

    // A cluster policy covers both namespaces; the tenant's own-namespace policy wins in its
    // namespace.
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: cluster, namespace: {p}}}\nspec: {{}}\n"));
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: own, namespace: {t}}}\nspec: {{}}\n"));
    let in_other = wait_for("report in the other namespace", 60, || report(o, "app").filter(|r| r["status"]["policy"].is_string()));
    assert_eq!(in_other["status"]["policy"], format!("{p}/cluster"));
    let in_tenant = wait_for("the tenant policy wins", 60, || report(t, "app").filter(|r| r["status"]["policy"] == format!("{t}/own")));
    assert_eq!(drifted(&in_tenant), Some("False"));
    // Policy status counts what it covers.
    let counts = wait_for("policy counts", 60, || {
        let out = kubectl(&["get", "driftpolicy", "cluster", "-n", p, "-o", "jsonpath={.status.matchedReleases}"]);
        (out.trim() == "1").then_some(out)
    });
    assert_eq!(counts.trim(), "1");
}

/// Bad input lands as a condition with a clear reason on the right object; nothing else is
/// disturbed.
#[tokio::test]
async fn bad_input_becomes_conditions() {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, "ctl-bad").await;
    let platform = TestNamespace::new(&client, "ctl-bad-platform").await;
    let n = ns.name.as_str();
    kubectl(&["create", "configmap", "present", "-n", n, "--from-literal=k=v"]);
    let odd = "---\n# Source: handmade/templates/cm.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: present\ndata:\n  k: v\n---\n# Source: handmade/templates/gadget.yaml\napiVersion: gadgets.example.com/v1\nkind: Gadget\nmetadata:\n  name: g\n";
    common::write_record(&client, n, "odd", common::record_payload(n, "odd", odd)).await;
    common::write_record(&client, n, "broken", "not base64 at all!".into()).await;
    Helm::V3.ok(&["install", "good", &common::chart("fullstack"), "-n", n, "--set", "widget.enabled=false"]);
    let log = format!("{}/controller-{n}.log", std::env::temp_dir().display());
    let ctl = start_controller(&platform.name, &platform.name, &[n], &log);
    // An invalid policy first (alphabetically first, so it would win were it used).
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: a-invalid, namespace: {n}}}\nspec:\n  ignore:\n  - paths: [spec/replicas]\n"));
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: b-valid, namespace: {n}}}\nspec: {{interval: 1m}}\n"));

    let invalid = wait_for("InvalidPolicy", 60, || {
        let out = kubectl(&["get", "driftpolicy", "a-invalid", "-n", n, "-o", "json"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        v["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready" && c["reason"] == "InvalidPolicy").cloned()
    });
    assert!(invalid["message"].as_str().unwrap().contains("is not a JSON pointer"), "{invalid}");

    let broken = wait_for("the corrupt release's report", 60, || report(n, "broken").filter(|r| condition(r, "Ready").is_some()));
    let ready = condition(&broken, "Ready").unwrap();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("RecordCorrupt")));
    assert!(ready["message"].as_str().unwrap().contains("not valid base64"), "{ready}");
    assert_eq!(broken["status"]["drift"], "Unknown");
    // The error's kind is the Event's reason and the checks' result label, once per turn.
    wait_for("a RecordCorrupt Event", 30, || (events(n, "RecordCorrupt") >= 1).then_some(()));
    assert!(metric(ctl.metrics_port, "driftwatch_checks_total{result=\"decode_error\"}").is_some_and(|v| v.parse::<u64>().unwrap() >= 1));

    let odd = wait_for("the odd release's report", 60, || report(n, "odd").filter(|r| condition(r, "Ready").is_some()));
    assert_eq!(odd["status"]["policy"], format!("{n}/b-valid"), "the invalid policy is not used");
    let gadget = odd["status"]["resources"].as_array().unwrap().iter().find(|r| r["kind"] == "Gadget").unwrap();
    assert_eq!(gadget["state"], "Error");
    assert_eq!(gadget["message"], "kind Gadget of gadgets.example.com/v1 is not served by this API server");
    assert_eq!(condition(&odd, "Ready").unwrap()["message"], "checked 1 of 2 resources");

    let good = wait_for("the good release's report", 60, || report(n, "good").filter(|r| condition(r, "Ready").is_some()));
    assert_eq!(drifted(&good), Some("False"));
}

/// The report's verdicts are the engine's: after the drift patterns of the engine's tests, the
/// report lists the same objects, states and fields as `driftwatch check -o json`.
#[tokio::test]
async fn report_verdicts_equal_the_engine() {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, "ctl-verdicts").await;
    let platform = TestNamespace::new(&client, "ctl-verdicts-platform").await;
    let n = ns.name.as_str();
    Helm::V4.ok(&["install", "app", &common::chart("fullstack"), "-n", n]);
    let log = format!("{}/controller-{n}.log", std::env::temp_dir().display());
    let _ctl = start_controller(&platform.name, &platform.name, &[n], &log);
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: p, namespace: {n}}}\nspec: {{interval: 1m}}\n"));
    wait_for("first report", 60, || report(n, "app").filter(|r| condition(r, "Ready").is_some()));

    set_memory(n, "app-fullstack", "512Mi", "1Gi");
    kubectl(&["scale", "deployment/app-fullstack", "-n", n, "--replicas=4"]);
    kubectl(&["patch", "deployment/app-fullstack", "-n", n, "--type=strategic", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"DEBUG","value":"1"}]}]}}}}"#]);
    kubectl(&["label", "--overwrite", "service/app-fullstack", "-n", n, "app.kubernetes.io/version=0"]);
    kubectl(&["delete", "configmap/app-cache-config", "-n", n]);
    kubectl(&["patch", "secret/app-fullstack", "-n", n, "--type=merge", "-p", r#"{"stringData":{"password":"x"}}"#]);
    kubectl(&["patch", "widget/app-fullstack", "-n", n, "--type=merge", "-p", r#"{"spec":{"color":"green"}}"#]);

    let cli = || -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_driftwatch")).args(["check", "app", "-n", n, "-o", "json"]).output().unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["releases"][0].clone()
    };
    let want = cli();
    assert_eq!(want["summary"]["modified"], 4, "{}", want["summary"]);
    let got = wait_for("the report to show every drift", 60, || {
        let r = report(n, "app")?;
        (r["status"]["summary"] == want["summary"] && drift_shape(&r["status"]["resources"]) == drift_shape(&want["resources"])).then_some(r)
    });
    assert_eq!(condition(&got, "Drifted").unwrap()["status"], "True");
    assert_eq!(got["status"]["driftedResources"], format!("5/{}", want["summary"]["resources"]));
    assert!(!got.to_string().contains("\"x\""), "no Secret value in the report");
}

/// One namespace with release `app` of the test chart, a platform namespace of its own, and a
/// controller watching it under the policy `p` with this spec (YAML lines, indented two).
struct Scene {
    ns: TestNamespace,
    _platform: TestNamespace,
    _ctl: ControllerProcess,
    log: String,
}

impl Scene {
    async fn new(prefix: &str, helm: Helm, set: &str, policy_spec: &str) -> Scene {
        let client = common::client().await;
        let ns = TestNamespace::new(&client, prefix).await;
        let platform = TestNamespace::new(&client, &format!("{prefix}-platform")).await;
        helm.ok(&["install", "app", &common::chart("fullstack"), "-n", &ns.name, "--set", set]);
        let log = format!("{}/controller-{}.log", std::env::temp_dir().display(), ns.name);
        let ctl = start_controller(&platform.name, &platform.name, &[&ns.name], &log);
        apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: p, namespace: {}}}\nspec:\n{policy_spec}", ns.name));
        wait_for("first report", 60, || report(&ns.name, "app").filter(|r| drifted(r) == Some("False")));
        Scene { ns, _platform: platform, _ctl: ctl, log }
    }
}

fn jsonpath(ns: &str, what: &str, path: &str) -> String {
    kubectl(&["get", what, "-n", ns, "-o", &format!("jsonpath={path}")])
}

/// Heal mode: drift is put back the way Helm would (field manager `helm`), a missing object is
/// recreated with Helm's stamps, ignored paths are never touched, Secret values never appear,
/// and the next `helm upgrade` (no force flag) and `helm rollback` still work.
async fn heals(helm: Helm) {
    let scene = Scene::new(
        &format!("heal-{}", helm.short()),
        helm,
        "statefulset.enabled=false",
        // Seven edits in a row may take as many heal passes and more, racing them (the rate
        // limit has its own test).
        "  mode: Heal\n  interval: 1m\n  heal: {maxPerHour: 100}\n  ignore:\n  - paths: [/spec/replicas]\n    target: {kind: Deployment}\n",
    )
    .await;
    let (n, log) = (scene.ns.name.as_str(), scene.log.as_str());
    let chart = common::chart("fullstack");

    set_memory(n, "app-fullstack", "512Mi", "1Gi");
    kubectl(&["scale", "deployment/app-fullstack", "-n", n, "--replicas=5"]);
    kubectl(&["delete", "configmap/app-cache-config", "-n", n]);
    kubectl(&["patch", "secret/app-fullstack", "-n", n, "--type=merge", "-p", r#"{"stringData":{"password":"changed-by-hand"}}"#]);
    kubectl(&["patch", "widget/app-fullstack", "-n", n, "--type=merge", "-p", r#"{"spec":{"color":"red"}}"#]);
    kubectl(&["label", "--overwrite", "service/app-fullstack", "-n", n, "app.kubernetes.io/version=9.9.9"]);
    kubectl(&["patch", "configmap/app-fullstack", "-n", n, "--type=json", "-p", r#"[{"op":"remove","path":"/data/greeting"}]"#]);

    wait_for("label put back", 60, || (jsonpath(n, "service/app-fullstack", "{.metadata.labels.app\\.kubernetes\\.io/version}") == "2.4.1").then_some(()));
    wait_for("removed field put back", 60, || (jsonpath(n, "configmap/app-fullstack", "{.data.greeting}") == "hello").then_some(()));
    let mem = "{.spec.template.spec.containers[0].resources.limits.memory}";
    wait_for("memory put back", 60, || (jsonpath(n, "deployment/app-fullstack", mem) == "512Mi").then_some(()));
    wait_for("ConfigMap recreated", 60, || (kubectl(&["get", "configmap", "-n", n, "-o", "name"]).contains("configmap/app-cache-config")).then_some(()));
    wait_for("Secret put back", 60, || {
        let b64 = jsonpath(n, "secret/app-fullstack", "{.data.password}");
        (b64 == "bm90LWEtcmVhbC1wYXNzd29yZA==").then_some(())
    });
    wait_for("custom resource put back", 60, || (jsonpath(n, "widget/app-fullstack", "{.spec.color}") == "blue").then_some(()));
    assert_eq!(jsonpath(n, "deployment/app-fullstack", "{.spec.replicas}"), "5", "an ignored path is never healed");
    let r = wait_for("report back in sync", 60, || report(n, "app").filter(|r| drifted(r) == Some("False") && r["status"]["heals"].as_u64() >= Some(1)));
    let healed = condition(&r, "Healed").unwrap();
    assert_eq!((healed["status"].as_str(), healed["reason"].as_str()), (Some("True"), Some("HealSucceeded")), "{healed}");
    let cm = jsonpath(n, "configmap/app-cache-config", "{.metadata.annotations.meta\\.helm\\.sh/release-name}");
    assert_eq!(cm, "app", "recreated with Helm's ownership stamps");
    let managed = kubectl(&["get", "deployment/app-fullstack", "-n", n, "-o", "json", "--show-managed-fields"]);
    let managed: Value = serde_json::from_str(&managed).unwrap();
    let by_helm = managed["metadata"]["managedFields"].as_array().unwrap().iter().any(|m| m["manager"] == "helm" && m["fieldsV1"].to_string().contains("f:memory"));
    assert!(by_helm, "the healed field is owned by helm: {}", managed["metadata"]["managedFields"]);
    wait_for("DriftHealed event", 30, || (events(n, "DriftHealed") > 0).then_some(()));
    let everything = format!("{}{}", kubectl(&["get", "events", "-n", n, "-o", "json"]), std::fs::read_to_string(log).unwrap());
    assert!(!everything.contains("changed-by-hand") && !everything.contains("not-a-real-password"), "a Secret value leaked into Events or logs");
    let r = report(n, "app").unwrap().to_string();
    assert!(!r.contains("changed-by-hand") && !r.contains("not-a-real-password"), "a Secret value leaked into the report");

    // The ignored scale belongs to someone else; with a different value Helm 4's server-side
    // upgrade would conflict with it whatever Driftwatch did, so it is put back first (the
    // `kubectl` manager keeps the field, at the chart's value).
    kubectl(&["scale", "deployment/app-fullstack", "-n", n, "--replicas=2"]);
    // The next helm upgrade (no force flag) and rollback work, and the result is in sync.
    helm.ok(&["upgrade", "app", &chart, "-n", n, "--set", "statefulset.enabled=false,web.env.LOG_LEVEL=debug,config.data.greeting=hi"]);
    let check = |what: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
            .args(["check", "app", "-n", n, "-o", "json", "--ignore-path", "Deployment:/spec/replicas"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["releases"][0]["drifted"], false, "{what}: {}", v["releases"][0]);
    };
    check("after helm upgrade");
    helm.ok(&["rollback", "app", "1", "-n", n]);
    check("after helm rollback");
}

#[tokio::test]
async fn helm3_heals() {
    heals(Helm::V3).await;
}

#[tokio::test]
async fn helm4_heals() {
    heals(Helm::V4).await;
}

/// A process that keeps putting its own value back with another field manager gets the path
/// marked contested after three rounds; the report names it and the rule that would settle it;
/// other paths are still healed.
#[tokio::test]
async fn contested_paths_stop_being_healed() {
    let scene = Scene::new("contest", Helm::V3, "statefulset.enabled=false,widget.enabled=false", "  mode: Heal\n  interval: 1m\n").await;
    let n = scene.ns.name.as_str();

    let fight = || {
        let out = Command::new("kubectl")
            .args(["patch", "configmap/app-fullstack", "-n", n, "--field-manager=fighter", "--type=merge", "-p", r#"{"data":{"greeting":"mine"}}"#])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let greeting = || jsonpath(n, "configmap/app-fullstack", "{.data.greeting}");
    for round in 1..=3 {
        fight();
        wait_for(&format!("heal round {round}"), 60, || (greeting() == "hello").then_some(()));
    }
    fight();
    let r = wait_for("HealContested", 60, || report(n, "app").filter(|r| condition(r, "Healed").is_some_and(|c| c["reason"] == "HealContested")));
    let msg = condition(&r, "Healed").unwrap()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("fighter") && msg.contains("/data/greeting") && msg.contains("ignore"), "{msg}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(greeting(), "mine", "a contested path is no longer healed");
    wait_for("HealContested event", 30, || (events(n, "HealContested") > 0).then_some(()));
    // Other paths are still healed.
    set_memory(n, "app-fullstack", "512Mi", "1Gi");
    wait_for("memory still healed", 60, || (jsonpath(n, "deployment/app-fullstack", "{.spec.template.spec.containers[0].resources.limits.memory}") == "512Mi").then_some(()));
}

/// heal.after leaves drift in place until it is old enough; heal.maxPerHour caps the heals;
/// nothing is healed while the release is pending (a `helm upgrade --wait` killed midway).
#[tokio::test]
async fn heal_guardrails() {
    let scene = Scene::new("guard", Helm::V3, "statefulset.enabled=false,widget.enabled=false", "  mode: Heal\n  interval: 1m\n  heal: {after: 30s, maxPerHour: 2}\n").await;
    let n = scene.ns.name.as_str();
    let greeting = || jsonpath(n, "configmap/app-fullstack", "{.data.greeting}");
    let drift = |v: &str| kubectl(&["patch", "configmap/app-fullstack", "-n", n, "--type=merge", "-p", &format!(r#"{{"data":{{"greeting":"{v}"}}}}"#)]);

    // heal.after: the drift stays for 30 s, then is healed.
    let t = Instant::now();
    drift("one");
    let r = wait_for("HealDelayed", 30, || report(n, "app").filter(|r| condition(r, "Healed").is_some_and(|c| c["reason"] == "HealDelayed")));
    assert_eq!(drifted(&r), Some("True"));
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(greeting(), "one", "healed before heal.after");
    wait_for("healed after the grace", 90, || (greeting() == "hello").then_some(()));
    assert!(t.elapsed() >= Duration::from_secs(30), "healed before heal.after: {:?}", t.elapsed());

    // maxPerHour 2: the second drift is healed (after its own 30 s), the third is not.
    drift("two");
    wait_for("second heal", 90, || (greeting() == "hello").then_some(()));
    drift("three");
    let r = wait_for("RateLimited", 90, || report(n, "app").filter(|r| condition(r, "Healed").is_some_and(|c| c["reason"] == "RateLimited")));
    assert_eq!(r["status"]["heals"], 2);
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(greeting(), "three", "a third heal within the hour");
}

#[tokio::test]
async fn nothing_is_healed_while_pending() {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, "pending").await;
    let platform = TestNamespace::new(&client, "pending-platform").await;
    let n = ns.name.as_str();
    let chart = common::chart("fullstack");
    Helm::V3.ok(&["install", "app", &chart, "-n", n, "--set", "statefulset.enabled=false,widget.enabled=false"]);
    // Kill helm midway (while it waits for the rollout) and the release stays pending-upgrade.
    let mut upgrade = Command::new(Helm::V3.binary())
        .args(["upgrade", "app", &chart, "-n", n, "--wait", "--timeout", "10m", "--set", "statefulset.enabled=false,widget.enabled=false,replicaCount=3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("pending-upgrade", 60, || {
        let s = kubectl(&["get", "secret", "-n", n, "-l", "owner=helm,status=pending-upgrade", "-o", "name"]);
        (!s.trim().is_empty()).then_some(())
    });
    upgrade.kill().unwrap();
    let _ = upgrade.wait();
    let log = format!("{}/controller-{n}.log", std::env::temp_dir().display());
    let _ctl = start_controller(&platform.name, &platform.name, &[n], &log);
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: heal, namespace: {n}}}\nspec: {{mode: Heal, interval: 1m}}\n"));
    kubectl(&["patch", "configmap/app-fullstack", "-n", n, "--type=merge", "-p", r#"{"data":{"greeting":"pending"}}"#]);
    let r = wait_for("ReleasePending", 60, || report(n, "app").filter(|r| condition(r, "Healed").is_some_and(|c| c["reason"] == "ReleasePending")));
    assert_eq!(condition(&r, "ReleaseHealthy").unwrap()["status"], "False");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(jsonpath(n, "configmap/app-fullstack", "{.data.greeting}"), "pending", "healed while pending");
    assert_eq!(report(n, "app").unwrap()["status"]["heals"], 0);
}

/// How often the controller's watches saw a change (a new change token) of this object (its
/// kind's watch sees every namespace: other tests' objects of the same name are not this one).
fn changes_seen(log: &str, kind: &str, ns: &str, name: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "object changed" && v["fields"]["kind"] == kind && v["fields"]["namespace"] == ns && v["fields"]["name"] == name)
        .count()
}

/// What kube-controller-manager writes all day — status — is not a change of anything a
/// manifest says: the watch does not re-check the release for it (and so reads nothing). A
/// spec edit still is a change, and is reported.
#[tokio::test]
async fn status_updates_are_not_rechecked() {
    let scene = Scene::new("quiet", Helm::V3, "statefulset.enabled=false,cronjob.enabled=false,widget.enabled=false", "  ignoreManagers: [kube-controller-manager]\n").await;
    let ns = &scene.ns.name;
    let deployment = "app-fullstack";
    // Let the start settle: kube-controller-manager's first rollout annotates the Deployment
    // (a real change of its metadata), and the watch must have listed.
    let mut last = usize::MAX;
    let settled = wait_for("the Deployment to settle", 60, || {
        std::thread::sleep(std::time::Duration::from_secs(2));
        let rv = jsonpath(ns, &format!("deployment/{deployment}"), "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}");
        let now = changes_seen(&scene.log, "Deployment", ns, deployment);
        let same = now == last && !rv.is_empty();
        last = now;
        same.then_some(now)
    });
    for i in 0..3 {
        let body = format!(r#"{{"status":{{"observedGeneration":1,"unavailableReplicas":{}}}}}"#, 5 + i);
        kubectl(&["patch", "deployment", deployment, "-n", ns, "--subresource=status", "--type=merge", "-p", &body]);
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(changes_seen(&scene.log, "Deployment", ns, deployment), settled, "a status update counted as a change");
    assert_eq!(drifted(&report(ns, "app").unwrap()), Some("False"));
    set_memory(ns, deployment, "512Mi", "1Gi");
    wait_for("Drifted after a spec edit", 30, || report(ns, "app").filter(|r| drifted(r) == Some("True")));
    assert!(changes_seen(&scene.log, "Deployment", ns, deployment) > settled);
}

/// Issue 12, bug 1: a heal never touches a path the policy ignores, whatever selects it — here
/// an ignore rule that selects the Deployment by a label only the live object carries (Helm's
/// `app.kubernetes.io/managed-by` stamp), under both apply methods.
async fn heal_honours_label_selected_ignores(helm: Helm) {
    let scene = Scene::new(
        &format!("heal-label-{}", helm.short()),
        helm,
        "statefulset.enabled=false",
        "  mode: Heal\n  interval: 1m\n  ignore:\n  - paths: [/spec/replicas]\n    target: {kind: Deployment, labelSelector: app.kubernetes.io/managed-by=Helm}\n",
    )
    .await;
    let n = scene.ns.name.as_str();
    kubectl(&["scale", "deployment/app-fullstack", "-n", n, "--replicas=5"]);
    set_memory(n, "app-fullstack", "512Mi", "1Gi");
    let mem = "{.spec.template.spec.containers[0].resources.limits.memory}";
    wait_for("memory put back", 60, || (jsonpath(n, "deployment/app-fullstack", mem) == "512Mi").then_some(()));
    wait_for("the report back in sync", 60, || report(n, "app").filter(|r| drifted(r) == Some("False")));
    assert_eq!(jsonpath(n, "deployment/app-fullstack", "{.spec.replicas}"), "5", "the label-selected ignored path was healed");
}

#[tokio::test]
async fn helm3_heal_honours_label_selected_ignores() {
    heal_honours_label_selected_ignores(Helm::V3).await;
}

#[tokio::test]
async fn helm4_heal_honours_label_selected_ignores() {
    heal_honours_label_selected_ignores(Helm::V4).await;
}

/// Issue 12, bug 2: one policy for the whole reconcile. The release's own-namespace policy
/// selects another chart; the cluster policy (which ignores replicas) is the one that covers
/// it — so the report names the cluster policy and is made with the cluster policy's rules.
#[tokio::test]
async fn one_policy_for_the_whole_reconcile() {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, "one-policy").await;
    let platform = TestNamespace::new(&client, "one-policy-platform").await;
    let (n, p) = (ns.name.as_str(), platform.name.as_str());
    Helm::V3.ok(&["install", "app", &common::chart("fullstack"), "-n", n, "--set", "widget.enabled=false"]);
    common::wait_for_controllers(n);
    kubectl(&["scale", "deployment/app-fullstack", "-n", n, "--replicas=4"]);
    // Both policies are there before the controller starts: its first check already has to choose.
    common::apply_crds();
    apply_yaml(&format!(
        "apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: cluster, namespace: {p}}}\nspec:\n  ignore:\n  - paths: [/spec/replicas]\n    target: {{kind: Deployment}}\n"
    ));
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: other-chart, namespace: {n}}}\nspec:\n  releaseSelector:\n    charts: [\"other-*\"]\n"));
    let log = format!("{}/controller-{n}.log", std::env::temp_dir().display());
    let _ctl = start_controller(p, p, &[n, p], &log);
    let r = wait_for("a report under the cluster policy", 60, || report(n, "app").filter(|r| r["status"]["policy"] == format!("{p}/cluster") && condition(r, "Ready").is_some()));
    assert_eq!(drifted(&r), Some("False"), "the cluster policy ignores replicas, and its rules made this report: {}", r["status"]);
}

/// Issue 18: a listing made for one check must not hide an edit from the next. Edits one after
/// another to objects of one kind in one namespace, across releases, within a listing's life:
/// each check after the first in that window is served by the listing, which predates the next
/// edit — the watches' version of each object decides, and every edit is Drifted at once.
#[tokio::test]
async fn a_listing_never_hides_an_edit() {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, "listing").await;
    let platform = TestNamespace::new(&client, "listing-platform").await;
    let n = ns.name.as_str();
    for (name, helm) in [("a", Helm::V3), ("b", Helm::V4), ("c", Helm::V3)] {
        helm.ok(&["install", name, &common::chart("many"), "-n", n, "--set", "apps=3,image=registry.example.com/app:1"]);
    }
    let log = format!("{}/controller-{n}.log", std::env::temp_dir().display());
    let _ctl = start_controller(&platform.name, &platform.name, &[n], &log);
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: team, namespace: {n}}}\nspec:\n  interval: 1h\n"));
    for rel in ["a", "b", "c"] {
        wait_for(&format!("{rel} in sync"), 60, || report(n, rel).filter(|r| drifted(r) == Some("False")));
    }
    // The cold scan's listings have expired (10 s): the edits below make their own.
    std::thread::sleep(Duration::from_secs(11));
    let shape = |rel: &str| report(n, rel).filter(|r| r["status"]["resources"].is_array()).map(|r| drift_shape(&r["status"]["resources"])).unwrap_or_default();
    let edits: [(&str, &[&str], &str); 5] = [
        ("a", &["patch", "configmap/a-app-0", "--type=merge", "-p", r#"{"data":{"index":"7"}}"#], "a-app-0"),
        ("a", &["patch", "configmap/a-app-1", "--type=merge", "-p", r#"{"data":{"index":"7"}}"#], "a-app-1"),
        ("b", &["patch", "configmap/b-app-0", "--type=merge", "-p", r#"{"data":{"index":"7"}}"#], "b-app-0"),
        ("c", &["delete", "configmap/c-app-2"], "c-app-2"),
        ("b", &["patch", "configmap/b-app-2", "--type=merge", "-p", r#"{"data":{"index":"7"}}"#], "b-app-2"),
    ];
    let started = Instant::now();
    for (rel, args, object) in edits {
        let mut args = args.to_vec();
        args.extend(["-n", n]);
        kubectl(&args);
        wait_for(&format!("{rel}: ConfigMap {object} drifted"), 8, || shape(rel).iter().any(|s| s.contains(&format!("\"{object}\""))).then_some(()));
    }
    eprintln!("5 edits of one kind in one namespace, each Drifted, in {} ms", started.elapsed().as_millis());
    assert_eq!(shape("c"), vec![r#""ConfigMap" "c-app-2" "Missing" []"#.to_string()]);
}
