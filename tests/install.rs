//! Installing Driftwatch (issue 14): the image `make image` built (imported into the node by
//! `make test`), the chart `charts/driftwatch` with the real helm v3 and v4, `deploy/`, the
//! alert rules (promtool, and a real Prometheus scraping the pods) and the dashboard's queries.
//! The chart runs as pods on the local node under its own ServiceAccount, namespaced
//! (`watchNamespaces`) so it never touches the other tests' namespaces; the cluster-wide RBAC is
//! checked with `kubectl auth can-i` against an install with no replicas.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Helm, TestNamespace, apply_yaml, condition, drifted, kubectl, report, set_memory, wait_for};
use driftwatch::controller::lease::{lease_name, shard_of};
use serde_json::Value;

const CHART: &str = "charts/driftwatch";
const IMAGE: &str = "driftwatch.local/driftwatch";

fn chart() -> String {
    common::repo_root().join(CHART).display().to_string()
}

fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

fn sh(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let out = sh(cmd, args);
    assert!(out.status.success(), "{cmd} {}: {}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn can_i(sa: &str, what: &[&str]) -> bool {
    let mut args = vec!["auth", "can-i"];
    args.extend_from_slice(what);
    let who = format!("--as={sa}");
    args.push(&who);
    String::from_utf8_lossy(&sh("kubectl", &args).stdout).trim() == "yes"
}

// --- The chart as files: lint, schema, CRDs, deploy/ ----------------------------------------

#[tokio::test]
async fn chart_lints_validates_and_matches_its_twins() {
    for helm in Helm::ALL {
        for set in ["", "prometheusRule.enabled=true,dashboard.enabled=true,metrics.serviceMonitor.enabled=true,heal.enabled=true", "watchNamespaces={a,b}", "watchNamespaces={a},clusterPolicyNamespaces={a,platform}", "leaderElection.shards=8,replicaCount=4"] {
            let path = chart();
            let mut args = vec!["lint", "--strict", path.as_str()];
            if !set.is_empty() {
                args.extend(["--set", set]);
            }
            let out = helm.run(&args);
            assert!(out.status.success(), "helm {helm:?} lint --strict {set}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        // Bad values are refused, naming the value.
        for (set, named) in [("replicaCount=two", "/replicaCount"), ("antiAffinity=sometimes", "/antiAffinity"), ("replicaz=2", "replicaz"), ("logFormat=xml", "/logFormat"), ("defaultPolicy.interval=soon", "/defaultPolicy/interval"), ("leaderElection.shards=0", "/leaderElection/shards"), ("leaderElection.shards=2,leaderElection.enabled=false", "leaderElection.shards above 1 needs leaderElection.enabled")] {
            let out = helm.run(&["template", "x", &chart(), "--set", set]);
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && said.contains(named), "helm {helm:?} template --set {set}: {said}");
        }
    }
    // The chart's CRDs are the generated ones, as is crds/.
    let generated = ok(env!("CARGO_BIN_EXE_driftwatch"), &["crdgen"]);
    for file in ["crds/driftwatch.io.yaml", "charts/driftwatch/crds/driftwatch.io.yaml"] {
        let text = std::fs::read_to_string(common::repo_root().join(file)).unwrap();
        assert!(text == generated, "{file} differs from `driftwatch crdgen`: run `driftwatch crdgen > {file}`");
    }
    // deploy/ is the chart rendered with its defaults.
    let rendered = ok(&common::repo_root().join("scripts/render-deploy").display().to_string(), &["--stdout"]);
    let written = std::fs::read_to_string(common::repo_root().join("deploy/driftwatch.yaml")).unwrap();
    assert!(rendered == written, "deploy/driftwatch.yaml differs from the chart: run scripts/render-deploy");
    // The server accepts every object (the CRDs first, for the default policy).
    common::apply_crds();
    let client = common::client().await;
    let ns = TestNamespace::new(&client, "chart-dry-run").await;
    let manifests = Helm::V3.ok(&["template", "driftwatch", &chart(), "-n", &ns.name, "--set", "heal.enabled=true"]);
    common::kubectl_stdin(&["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"], &manifests);
    let deploy = common::repo_root().join("deploy").display().to_string();
    let kustomized = kubectl(&["kustomize", &deploy]);
    assert!(kustomized.contains("kind: Namespace") && kustomized.contains("kind: Deployment"), "{kustomized}");
    // A server-side dry-run creates no namespace: the one deploy/ names is made for real (this
    // cluster is the tests' own; nothing runs in it).
    common::kubectl_stdin(&["apply", "-f", "-"], &std::fs::read_to_string(common::repo_root().join("deploy/namespace.yaml")).unwrap());
    let applied = kubectl(&["apply", "-k", &deploy, "--dry-run=server"]);
    assert!(applied.contains("deployment.apps/driftwatch") && applied.contains("driftpolicy.driftwatch.io/default"), "{applied}");
}

// --- The image ------------------------------------------------------------------------------

#[tokio::test]
async fn the_image_is_one_static_binary_run_as_65532() {
    let archive = common::repo_root().join("target/image/driftwatch.oci.tar");
    assert!(archive.is_file(), "{} is missing: `make test` builds it (scripts/image)", archive.display());
    let at = format!("oci-archive:{}", archive.display());
    let config: Value = serde_json::from_str(&ok("skopeo", &["inspect", "--config", &at])).unwrap();
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/driftwatch"]));
    assert_eq!(config["config"]["Labels"]["org.opencontainers.image.version"], version());
    assert_eq!(config["config"]["Labels"]["org.opencontainers.image.licenses"], "Apache-2.0");
    assert!(config["config"]["Labels"]["org.opencontainers.image.source"].is_string());
    let layers = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer: {layers:?}");
    // What the layer holds: the binary, nothing else (no /bin/sh).
    let dir = tempfile::tempdir().unwrap();
    ok("tar", &["-xf", &archive.display().to_string(), "-C", &dir.path().display().to_string()]);
    let index: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("index.json")).unwrap()).unwrap();
    let blob = |digest: &str| dir.path().join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap()).unwrap();
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let files: BTreeSet<String> = ok("tar", &["-tzf", &layer.display().to_string()]).lines().map(|l| l.trim_start_matches("./").to_string()).filter(|l| !l.is_empty()).collect();
    assert_eq!(files, BTreeSet::from(["driftwatch".to_string()]), "the layer holds only the binary");

    // It runs on the node.
    let client = common::client().await;
    let ns = TestNamespace::new(&client, "image").await;
    apply_yaml(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: version, namespace: {}}}\nspec:\n  restartPolicy: Never\n  containers:\n  - {{name: driftwatch, image: '{IMAGE}:{}', imagePullPolicy: Never, args: [--version]}}\n",
        ns.name,
        version()
    ));
    wait_for("the --version pod", 60, || (kubectl(&["get", "pod", "version", "-n", &ns.name, "-o", "jsonpath={.status.phase}"]) == "Succeeded").then_some(()));
    assert_eq!(kubectl(&["logs", "version", "-n", &ns.name]).trim(), format!("driftwatch {}", version()));
}

// --- Installed on the node ------------------------------------------------------------------

fn pods(ns: &str) -> Vec<(String, String, bool)> {
    let v: Value = serde_json::from_str(&kubectl(&["get", "pods", "-n", ns, "-l", "app.kubernetes.io/name=driftwatch", "-o", "json"])).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let ready = p["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            (p["metadata"]["name"].as_str().unwrap().to_string(), p["status"]["podIP"].as_str().unwrap_or("").to_string(), ready)
        })
        .collect()
}

fn holder(ns: &str) -> Option<String> {
    let out = sh("kubectl", &["get", "lease", "driftwatch-controller", "-n", ns, "-o", "jsonpath={.spec.holderIdentity}"]);
    let h = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !h.is_empty()).then_some(h)
}

/// The memory of the controllers running in pods (uid 65532): (pid, VmRSS in KiB, the
/// memory cgroup's usage in KiB), read from /proc and the container's cgroup on the node.
fn pod_controllers_memory() -> Vec<(u32, u64, u64)> {
    let pids = String::from_utf8_lossy(&sh("pgrep", &["-u", "65532", "-x", "driftwatch"]).stdout).into_owned();
    pids.lines()
        .filter_map(|pid| {
            let pid: u32 = pid.trim().parse().ok()?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())?;
            let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            let memory = cgroups.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))?;
            let usage: u64 = std::fs::read_to_string(format!("/sys/fs/cgroup/memory{memory}/memory.usage_in_bytes")).ok()?.trim().parse().ok()?;
            Some((pid, rss, usage / 1024))
        })
        .collect()
}

/// A Prometheus of the machine's package, on loopback, scraping the pods and evaluating the
/// chart's rules. Stopped (by pid) when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[String], rules: &Value) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let rules_file = dir.path().join("rules.yaml");
        std::fs::write(&rules_file, serde_json::json!({"groups": rules}).to_string()).unwrap();
        let config = serde_json::json!({
            "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
            "rule_files": [rules_file],
            "scrape_configs": [{"job_name": "driftwatch", "static_configs": [{"targets": targets}]}],
        });
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config.to_string()).unwrap();
        ok("promtool", &["check", "config", &config_file.display().to_string()]);
        let child = Command::new("prometheus")
            .args([
                &format!("--config.file={}", config_file.display()),
                &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (tests/cluster/install-packages installs it)");
        Prometheus { child, port, _dir: dir }
    }

    fn get(&self, path: &str) -> Option<Value> {
        let out = sh("curl", &["-sf", "--max-time", "5", &format!("http://127.0.0.1:{}{path}", self.port)]);
        serde_json::from_slice(&out.stdout).ok()
    }

    fn firing(&self, alert: &str) -> bool {
        self.get("/api/v1/alerts").is_some_and(|v| v["data"]["alerts"].as_array().is_some_and(|a| a.iter().any(|a| a["labels"]["alertname"] == alert && a["state"] == "firing")))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The chart's rules as `helm template` renders them (with `set`).
fn rendered_rules(set: &str) -> Value {
    let text = Helm::V3.ok(&["template", "x", &chart(), "--set", &format!("prometheusRule.enabled=true,{set}"), "--show-only", "templates/prometheusrule.yaml"]);
    let doc: Value = serde_saphyr::from_str(&text).unwrap();
    doc["spec"]["groups"].clone()
}

async fn install_on_the_node(helm: Helm) {
    let client = common::client().await;
    let platform = TestNamespace::new(&client, &format!("install-{}", helm.short())).await;
    let apps = TestNamespace::new(&client, &format!("install-{}-apps", helm.short())).await;
    let (p, a) = (platform.name.as_str(), apps.name.as_str());
    common::apply_crds();
    let watch = format!("watchNamespaces={{{a}}}");
    let release = format!("dw-{}", helm.short());
    helm.ok(&["install", &release, &chart(), "-n", p, "--set", &watch, "--wait", "--timeout", "120s"]);
    let running = pods(p);
    assert_eq!(running.iter().filter(|(_, _, ready)| *ready).count(), 2, "two pods Running and Ready: {running:?}");
    let leader = wait_for("a lease holder", 60, || holder(p));
    assert!(running.iter().any(|(n, _, _)| *n == leader), "the holder {leader} is one of the pods {running:?}");

    // A sample release, its drift, from the pod.
    helm.ok(&["install", "app", &common::chart("fullstack"), "-n", a, "--set", "statefulset.enabled=false,widget.enabled=false", "--wait", "--timeout", "120s"]);
    let r = wait_for("the sample's report, InSync", 60, || report(a, "app").filter(|r| drifted(r) == Some("False")));
    assert_eq!(r["status"]["policy"], format!("{p}/default"));
    set_memory(a, "app-fullstack", "512Mi", "1Gi");
    wait_for("Drifted after kubectl edit", 60, || report(a, "app").filter(|r| drifted(r) == Some("True")));

    // Least privilege: Detect reads, never writes workloads.
    let sa = format!("system:serviceaccount:{p}:{release}-driftwatch");
    for what in [["get", "deployments"], ["list", "secrets"], ["watch", "configmaps"], ["patch", "driftreports.driftwatch.io/status"], ["create", "events.events.k8s.io"]] {
        assert!(can_i(&sa, &[what[0], what[1], "-n", a]), "{sa} may {} {} in {a}", what[0], what[1]);
    }
    for what in [["patch", "deployments"], ["create", "configmaps"], ["delete", "deployments"], ["update", "secrets"]] {
        assert!(!can_i(&sa, &[what[0], what[1], "-n", a]), "{sa} may not {} {} in {a}", what[0], what[1]);
    }
    assert!(!can_i(&sa, &["list", "secrets", "-A"]), "namespaced: no cluster-wide read");
    assert!(can_i(&sa, &["update", "leases", "-n", p]));

    // A Heal policy without the permission: Healed=False, Forbidden, and the pods keep running.
    apply_yaml(&format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {{name: heal, namespace: {a}}}\nspec: {{mode: Heal, interval: 1h}}\n"));
    let mut last = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(60);
    let r = loop {
        last = report(a, "app").unwrap_or(last);
        if condition(&last, "Healed").is_some_and(|c| c["reason"] == "Forbidden") {
            break last;
        }
        assert!(Instant::now() < deadline, "no Healed=False Forbidden after 60 s: {}", last["status"]);
        std::thread::sleep(Duration::from_millis(300));
    };
    let healed = condition(&r, "Healed").unwrap();
    assert!(healed["message"].as_str().unwrap().contains("cannot patch") && healed["message"].as_str().unwrap().contains("heal.enabled=true"), "{healed}");
    std::thread::sleep(Duration::from_secs(5));
    let r = report(a, "app").unwrap();
    assert!(r["status"]["heals"].as_u64().unwrap_or(0) <= 2, "a forbidden heal is not retried at once: {}", r["status"]);
    assert!(pods(p).iter().all(|(_, _, ready)| *ready), "no crash loop: {}", kubectl(&["get", "pods", "-n", p]));

    // Deleting the leader's pod hands the lease over.
    let deleted = Instant::now();
    kubectl(&["delete", "pod", &leader, "-n", p, "--wait=false"]);
    let next = wait_for("the other pod takes the lease", 60, || holder(p).filter(|h| *h != leader));
    let handover = deleted.elapsed();
    // The other pod, or the replacement when it starts first (the leader hands the lease back
    // on its way out, and both are trying).
    assert!(pods(p).iter().any(|(n, _, _)| *n == next), "the new holder {next} is a running pod: {:?}", pods(p));
    eprintln!("[{helm:?}] leader pod deleted -> lease held by the other pod in {} ms", handover.as_millis());

    // helm upgrade with heal granted: the drift is put back from the pod.
    helm.ok(&["upgrade", &release, &chart(), "-n", p, "--set", &watch, "--set", "heal.enabled=true", "--wait", "--timeout", "120s"]);
    assert!(can_i(&sa, &["patch", "deployments", "-n", a]), "heal.enabled grants patch");
    let mem = "{.spec.template.spec.containers[0].resources.limits.memory}";
    wait_for("the heal from the pod", 120, || (kubectl(&["get", "deployment/app-fullstack", "-n", a, "-o", &format!("jsonpath={mem}")]) == "512Mi").then_some(()));
    let r = wait_for("InSync after the heal", 60, || report(a, "app").filter(|r| drifted(r) == Some("False")));
    assert_eq!(condition(&r, "Healed").unwrap()["reason"], "HealSucceeded", "{}", r["status"]);

    // Two shards: the rollout's new pods take no shard while an old pod holds the one-shard
    // Lease; then each holds one, and the sample's report is written by its shard's holder.
    helm.ok(&["upgrade", &release, &chart(), "-n", p, "--set", &watch, "--set", "heal.enabled=true,leaderElection.shards=2", "--wait", "--timeout", "120s"]);
    assert!(can_i(&sa, &["list", "leases", "-n", p]) && can_i(&sa, &["delete", "leases", "-n", p]));
    let shard_holder = |k: u32| {
        let out = sh("kubectl", &["get", "lease", &lease_name(k, 2), "-n", p, "-o", "jsonpath={.spec.holderIdentity}"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (h0, h1) = wait_for("each of the two pods to hold one shard", 90, || {
        let (h0, h1) = (shard_holder(0), shard_holder(1));
        let running: Vec<String> = pods(p).into_iter().map(|(n, _, _)| n).collect();
        (h0 != h1 && running.contains(&h0) && running.contains(&h1)).then_some((h0, h1))
    });
    eprintln!("[{helm:?}] --shards 2: shard 0 held by {h0}, shard 1 by {h1}");
    set_memory(a, "app-fullstack", "512Mi", "768Mi");
    wait_for("the heal from the shard's holder", 120, || (kubectl(&["get", "deployment/app-fullstack", "-n", a, "-o", &format!("jsonpath={mem}")]) == "512Mi").then_some(()));
    let (holder_of_a, other) = if shard_of(a, 2) == 0 { (&h0, &h1) } else { (&h1, &h0) };
    let wrote = |pod: &str| kubectl(&["logs", pod, "-n", p]).lines().any(|l| l.contains("DriftReport written") && l.contains(a));
    wait_for("the report written by the holder of its shard", 30, || wrote(holder_of_a).then_some(()));
    assert!(!wrote(other), "{other} does not hold {a}'s shard and wrote its report");

    for (pid, rss, cgroup) in pod_controllers_memory() {
        eprintln!("[{helm:?}] a controller in a pod (pid {pid}): VmRSS {rss} KiB, its container's memory cgroup {cgroup} KiB");
    }

    // helm uninstall: nothing of the release is left but the CRDs.
    helm.ok(&["uninstall", &release, "-n", p, "--wait", "--timeout", "60s"]);
    let selector = format!("app.kubernetes.io/instance={release}");
    for (what, ns) in [("clusterroles,clusterrolebindings", None), ("roles,rolebindings,deployments,services,serviceaccounts,poddisruptionbudgets", Some(p)), ("roles,rolebindings", Some(a))] {
        let mut args = vec!["get", what, "-l", &selector, "-o", "name"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        assert_eq!(kubectl(&args).trim(), "", "left after helm uninstall: {what}");
    }
    kubectl(&["get", "crd", "driftreports.driftwatch.io", "driftpolicies.driftwatch.io"]);
}

#[tokio::test]
async fn helm3_install_on_the_node() {
    install_on_the_node(Helm::V3).await;
}

#[tokio::test]
async fn helm4_install_on_the_node() {
    install_on_the_node(Helm::V4).await;
}

/// The cluster-wide RBAC, checked without running a controller over the whole (shared) test
/// cluster: the chart installed with no replicas.
#[tokio::test]
async fn cluster_wide_rbac_is_read_only_unless_heal() {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, "install-rbac").await;
    let n = ns.name.as_str();
    common::apply_crds();
    let release = format!("rbac-{}", std::process::id());
    let sa = format!("system:serviceaccount:{n}:{release}-driftwatch");
    Helm::V3.ok(&["install", &release, &chart(), "-n", n, "--set", "replicaCount=0,defaultPolicy.enabled=false,podDisruptionBudget.enabled=false"]);
    for what in [["get", "deployments"], ["list", "secrets"], ["watch", "configmaps"], ["list", "namespaces"], ["watch", "driftpolicies.driftwatch.io"], ["patch", "driftreports.driftwatch.io/status"]] {
        assert!(can_i(&sa, &[what[0], what[1], "-A"]), "{sa} may {} {} cluster-wide", what[0], what[1]);
    }
    for what in [["patch", "deployments"], ["create", "configmaps"], ["delete", "secrets"]] {
        assert!(!can_i(&sa, &[what[0], what[1], "-A"]), "{sa} may not {} {}", what[0], what[1]);
    }
    Helm::V3.ok(&["upgrade", &release, &chart(), "-n", n, "--set", "replicaCount=0,defaultPolicy.enabled=false,podDisruptionBudget.enabled=false,heal.enabled=true"]);
    assert!(can_i(&sa, &["patch", "deployments", "-A"]), "heal.enabled grants patch");
    assert!(!can_i(&sa, &["delete", "deployments", "-A"]), "a heal never deletes");
    Helm::V3.ok(&["uninstall", &release, "-n", n, "--wait"]);
    let left = kubectl(&["get", "clusterroles,clusterrolebindings", "-l", &format!("app.kubernetes.io/instance={release}"), "-o", "name"]);
    assert_eq!(left.trim(), "", "cluster-scoped objects left after helm uninstall");
}

// --- Alerts and dashboard -------------------------------------------------------------------

#[test]
fn alert_rules_pass_their_promtool_tests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), serde_json::json!({"groups": rendered_rules("")}).to_string()).unwrap();
    std::fs::copy(common::repo_root().join("tests/alerts/rules.test.yaml"), dir.path().join("rules.test.yaml")).unwrap();
    ok("promtool", &["check", "rules", &dir.path().join("rules.yaml").display().to_string()]);
    ok("promtool", &["test", "rules", &dir.path().join("rules.test.yaml").display().to_string()]);
}

/// Metric names in a PromQL expression (Driftwatch's prefixes).
fn series_in(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\b(helm|driftwatch)_[a-z_]+\b").unwrap();
    re.find_iter(expr).map(|m| m.as_str().to_string()).collect()
}

/// A real Prometheus scrapes the controller's pod, fires HelmDriftDetected on a real drift (its
/// `for` shortened by values) and resolves it after the undo; every dashboard query parses
/// there and uses only series Driftwatch exports.
#[tokio::test]
async fn prometheus_scrapes_the_pod_alerts_and_the_dashboard_queries_work() {
    let client = common::client().await;
    let platform = TestNamespace::new(&client, "alerts").await;
    let apps = TestNamespace::new(&client, "alerts-apps").await;
    let (p, a) = (platform.name.as_str(), apps.name.as_str());
    common::apply_crds();
    Helm::V3.ok(&["install", "app", &common::chart("fullstack"), "-n", a, "--set", "statefulset.enabled=false,widget.enabled=false"]);
    Helm::V3.ok(&["install", "dw", &chart(), "-n", p, "--set", &format!("watchNamespaces={{{a}}}"), "--wait", "--timeout", "120s"]);
    wait_for("the report", 60, || report(a, "app").filter(|r| drifted(r) == Some("False")));
    let targets: Vec<String> = pods(p).into_iter().map(|(_, ip, _)| format!("{ip}:8080")).collect();
    let prom = Prometheus::start(&targets, &rendered_rules("prometheusRule.rules.driftDetected.for=10s"));
    wait_for("Prometheus scrapes both pods", 60, || {
        let up = prom.get("/api/v1/query?query=up")?;
        (up["data"]["result"].as_array()?.iter().filter(|r| r["value"][1] == "1").count() == 2).then_some(())
    });
    assert!(!prom.firing("HelmDriftDetected"));
    set_memory(a, "app-fullstack", "512Mi", "1Gi");
    let fired = Instant::now();
    wait_for("HelmDriftDetected firing", 120, || prom.firing("HelmDriftDetected").then_some(()));
    eprintln!("HelmDriftDetected firing {} ms after the edit (for: 10s)", fired.elapsed().as_millis());
    set_memory(a, "app-fullstack", "1Gi", "512Mi");
    wait_for("HelmDriftDetected resolved", 120, || (!prom.firing("HelmDriftDetected")).then_some(()));

    // The dashboard: every query parses in this Prometheus, and names only exported series.
    let exported: BTreeSet<String> = {
        let names = prom.get("/api/v1/label/__name__/values").unwrap();
        names["data"].as_array().unwrap().iter().filter_map(|v| v.as_str()).map(str::to_string).collect()
    };
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(common::repo_root().join("charts/driftwatch/dashboards/driftwatch.json")).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"].as_array().unwrap().iter().flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string())).collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let registered = std::fs::read_to_string(common::repo_root().join("src/metrics.rs")).unwrap();
    let mut used = BTreeSet::new();
    for e in &exprs {
        let q = prom.get(&format!("/api/v1/query?query={}", urlencode(e))).unwrap_or_default();
        assert_eq!(q["status"], "success", "dashboard query {e}: {q}");
        let names = series_in(e);
        assert!(!names.is_empty(), "{e} names no Driftwatch series");
        for n in names {
            // Scraped, or registered by Driftwatch (a counter whose labels never took a value,
            // such as heals here, has no sample yet; a histogram is scraped as _bucket/_sum/_count).
            let family = ["_bucket", "_sum", "_count"].iter().fold(n.clone(), |n, s| n.strip_suffix(s).map(str::to_string).unwrap_or(n));
            assert!(exported.contains(&n) || registered.contains(&format!("\"{family}\"")), "{e}: {n} is not a series Driftwatch exports");
            used.insert(n);
        }
    }
    for needed in ["helm_release_info", "helm_drift_detected", "driftwatch_drift_first_detected_timestamp", "driftwatch_heals_total", "driftwatch_check_duration_seconds_bucket"] {
        assert!(used.contains(needed), "the dashboard shows {needed}");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
