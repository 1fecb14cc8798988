//! `driftwatch inventory` across two real control planes of the test's own (issue 17), started
//! by `tests/cluster/up` with their own state, ports and context names, merged into one
//! kubeconfig as a user would (`KUBECONFIG=a:b kubectl config view --flatten`). Releases made by
//! the real helm v3 and v4 in both: one chart at two versions across them, a release that
//! really failed (a ResourceQuota denies its ConfigMaps), one last deployed 60 days ago (its
//! record's times rewritten as Helm writes them). Then a cluster stopped, both stopped, and a
//! context whose user may not list Secrets cluster-wide.

mod common;

use std::process::Command;

use common::{Helm, OwnCluster};
use serde_json::Value;

/// `driftwatch inventory …` with this kubeconfig: (exit code, stdout, stderr).
fn inventory(kubeconfig: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_driftwatch")).arg("inventory").args(args).env("KUBECONFIG", kubeconfig).env_remove("DRIFTWATCH_CONTEXT").output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn json(kubeconfig: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let (code, out, err) = inventory(kubeconfig, &all);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The releases of an answer as "cluster/name chartVersion status".
fn rows(doc: &Value) -> Vec<String> {
    doc["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}/{} {} {}", r["cluster"].as_str().unwrap(), r["name"].as_str().unwrap(), r["chartVersion"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect()
}

/// Moves a release's deploy times back by `days`, in its record, as Helm writes them.
fn age_record(c: &OwnCluster, ns: &str, name: &str, days: i64) {
    let secret: Value = serde_json::from_str(&c.kubectl(&["get", "secret", &format!("sh.helm.release.v1.{name}.v1"), "-n", ns, "-o", "json"])).unwrap();
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::STANDARD.decode(secret["data"]["release"].as_str().unwrap()).unwrap();
    let mut rel = driftwatch::helm::unlock::payload_json(&payload).unwrap();
    let then = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days);
    rel["info"]["first_deployed"] = Value::String(then.to_string());
    rel["info"]["last_deployed"] = Value::String(then.to_string());
    let encoded = driftwatch::helm::release::encode_release_json(rel.to_string().as_bytes());
    let data = base64::engine::general_purpose::STANDARD.encode(encoded);
    c.kubectl(&["patch", "secret", &format!("sh.helm.release.v1.{name}.v1"), "-n", ns, "--type=merge", "-p", &serde_json::json!({"data": {"release": data}}).to_string()]);
}

#[test]
fn inventory_across_two_clusters() {
    let a = OwnCluster::start("driftwatch-inv-a", 26900, Some(false));
    let b = OwnCluster::start("driftwatch-inv-b", 26920, Some(false));
    // Removed when the test ends, passed or not.
    let tmp_dir = tempfile::Builder::new().prefix("driftwatch-inventory-").tempdir().unwrap();
    let tmp = tmp_dir.path().to_path_buf();
    // The `many` chart at 0.1.0 (as it is) and at 0.2.0 (packaged with another version).
    let many = common::chart("many");
    let out = Helm::V3.run(&["package", &many, "--version", "0.2.0", "-d", &tmp.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let many2 = tmp.join("many-0.2.0.tgz").display().to_string();
    let ns = "inventory";
    for c in [&a, &b] {
        c.kubectl(&["create", "namespace", ns]);
    }
    // a: web (helm 3, 0.1.0), api (helm 4, 0.2.0), legacy (helm 3, deployed 60 days ago).
    a.helm_ok(Helm::V3, &["install", "web", &many, "-n", ns, "--set", "apps=1"]);
    a.helm_ok(Helm::V4, &["install", "api", &many2, "-n", ns, "--set", "apps=1"]);
    a.helm_ok(Helm::V3, &["install", "legacy", &many, "-n", ns, "--set", "apps=1"]);
    age_record(&a, ns, "legacy", 60);
    // b: web (helm 4, 0.2.0), api (helm 3, 0.1.0), broken (helm 4: a quota denies its ConfigMap).
    b.helm_ok(Helm::V4, &["install", "web", &many2, "-n", ns, "--set", "apps=1"]);
    b.helm_ok(Helm::V3, &["install", "api", &many, "-n", ns, "--set", "apps=1"]);
    b.kubectl_stdin(&["apply", "-f", "-"], &format!("apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: no-more-configmaps, namespace: {ns}}}\nspec: {{hard: {{count/configmaps: \"2\"}}}}\n"));
    common::wait_for("the quota's usage", 60, || (!b.kubectl(&["get", "resourcequota", "no-more-configmaps", "-n", ns, "-o", "jsonpath={.status.used}"]).is_empty()).then_some(()));
    let failed = b.helm(Helm::V4, &["install", "broken", &many, "-n", ns, "--set", "apps=2"]);
    assert!(!failed.status.success(), "the quota did not stop the install");

    // One kubeconfig with both contexts, as a user merges them.
    let merged = tmp.join("kubeconfig");
    let out = Command::new("kubectl").args(["config", "view", "--flatten"]).env("KUBECONFIG", format!("{}:{}", a.kubeconfig, b.kubeconfig)).output().unwrap();
    std::fs::write(&merged, &out.stdout).unwrap();
    let merged = merged.display().to_string();
    let contexts = String::from_utf8_lossy(&Command::new("kubectl").args(["config", "get-contexts", "-o", "name"]).env("KUBECONFIG", &merged).output().unwrap().stdout).to_string();
    assert_eq!(contexts.lines().collect::<Vec<_>>(), ["driftwatch-inv-a", "driftwatch-inv-b"], "each control plane has its own context name");

    // Everything, from both clusters.
    let all = json(&merged, &["--all-contexts", "-n", ns]);
    assert_eq!(
        rows(&all),
        [
            "driftwatch-inv-a/api 0.2.0 deployed",
            "driftwatch-inv-a/legacy 0.1.0 deployed",
            "driftwatch-inv-a/web 0.1.0 deployed",
            "driftwatch-inv-b/api 0.1.0 deployed",
            "driftwatch-inv-b/broken 0.1.0 failed",
            "driftwatch-inv-b/web 0.2.0 deployed",
        ],
        "{all:#}"
    );
    let clusters: Vec<(String, String)> = all["clusters"].as_array().unwrap().iter().map(|c| (c["context"].as_str().unwrap().to_string(), c["state"].as_str().unwrap().to_string())).collect();
    assert_eq!(clusters, [("driftwatch-inv-a".to_string(), "ok".to_string()), ("driftwatch-inv-b".to_string(), "ok".to_string())]);
    for c in all["clusters"].as_array().unwrap() {
        // Two metadata LISTs (Secrets, ConfigMaps), then the three releases' payloads: the first
        // by GET, the other two from one LIST of the namespace's records.
        assert_eq!(c["requests"], 4, "{c}");
    }
    let legacy = all["releases"].as_array().unwrap().iter().find(|r| r["name"] == "legacy").unwrap();
    let deployed: jiff::Timestamp = legacy["lastDeployed"].as_str().unwrap().parse().unwrap();
    assert!((jiff::Timestamp::now() - deployed).get_seconds() > 59 * 86400, "{legacy}");
    // The table a person reads: aligned, the age in days, no colour when not a terminal.
    let (code, table, _) = inventory(&merged, &["--all-contexts", "-n", ns]);
    assert_eq!(code, 0);
    assert!(table.starts_with("CLUSTER            NAMESPACE   NAME     REVISION   STATUS"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("driftwatch-inv-a   inventory   legacy") && l.ends_with("60d")), "{table}");
    assert!(!table.contains('\x1b'));
    eprintln!("$ driftwatch inventory --all-contexts -n {ns}\n{table}");
    let (_, skew_table, _) = inventory(&merged, &["--all-contexts", "-n", ns, "--skew"]);
    eprintln!("$ driftwatch inventory --all-contexts -n {ns} --skew\n{skew_table}");

    // The filters select exactly.
    let skew = json(&merged, &["--all-contexts", "-n", ns, "--skew"]);
    let versions: Vec<(String, Vec<Value>, usize)> = skew["skew"][0]["versions"].as_array().unwrap().iter().map(|v| (v["version"].as_str().unwrap().to_string(), v["clusters"].as_array().unwrap().clone(), v["releases"].as_array().unwrap().len())).collect();
    assert_eq!(skew["skew"][0]["chart"], "many", "{skew:#}");
    assert_eq!(skew["skew"].as_array().unwrap().len(), 1, "{skew:#}");
    assert_eq!(versions, [("0.2.0".to_string(), vec![Value::from("driftwatch-inv-a"), Value::from("driftwatch-inv-b")], 2), ("0.1.0".to_string(), vec![Value::from("driftwatch-inv-a"), Value::from("driftwatch-inv-b")], 4)], "{skew:#}");
    assert_eq!(rows(&json(&merged, &["--all-contexts", "-n", ns, "--failed"])), ["driftwatch-inv-b/broken 0.1.0 failed"]);
    assert_eq!(rows(&json(&merged, &["--all-contexts", "-n", ns, "--stale", "720h"])), ["driftwatch-inv-a/legacy 0.1.0 deployed"]);
    assert_eq!(rows(&json(&merged, &["--all-contexts", "-n", ns, "--chart", "man?", "--stale", "1h"])), ["driftwatch-inv-a/legacy 0.1.0 deployed"]);
    let (code, csv, _) = inventory(&merged, &["--context", "driftwatch-inv-b", "-n", ns, "-o", "csv", "--failed"]);
    assert_eq!(code, 0);
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.lines().nth(1).unwrap().starts_with("driftwatch-inv-b,ok,inventory,broken,1,failed,many,0.1.0,"), "{csv}");

    // --drifted: where the controller runs, from its DriftReports (written here as it writes
    // them); where it does not (no DriftReport kind served), from a check of each release.
    b.kubectl(&["apply", "-f", &common::repo_root().join("crds/driftwatch.io.yaml").display().to_string()]);
    common::wait_for("the DriftReport kind", 30, || b.cmd("kubectl").args(["get", "driftreports", "-n", ns]).output().ok().filter(|o| o.status.success()).map(|_| ()));
    for (name, drift) in [("api", "Drifted"), ("web", "InSync")] {
        b.kubectl_stdin(&["apply", "-f", "-"], &format!("apiVersion: driftwatch.io/v1alpha1\nkind: DriftReport\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{}}\nstatus: {{drift: {drift}}}\n"));
    }
    a.kubectl(&["scale", "deploy", "web-app-0", "-n", ns, "--replicas=3"]);
    let drifted = json(&merged, &["--all-contexts", "-n", ns, "--drifted"]);
    assert_eq!(rows(&drifted), ["driftwatch-inv-a/web 0.1.0 deployed", "driftwatch-inv-b/api 0.1.0 deployed"], "{drifted:#}");
    let (_, table, _) = inventory(&merged, &["--context", "driftwatch-inv-b", "-n", ns, "--drifted"]);
    assert!(table.lines().next().unwrap().ends_with("DEPLOYED   DRIFTED"), "{table}");
    let unknown = json(&merged, &["--context", "driftwatch-inv-b", "-n", ns, "--chart", "many"]);
    assert!(unknown["releases"].as_array().unwrap().iter().all(|r| r.get("drifted").is_none()), "drift is read only when asked");

    // A context whose user may list Secrets only in its own namespace: forbidden cluster-wide.
    b.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: viewer, namespace: {ns}}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: viewer, namespace: {ns}}}\n\
             rules: [{{apiGroups: [\"\"], resources: [secrets, configmaps], verbs: [get, list]}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: viewer, namespace: {ns}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: viewer}}\n\
             subjects: [{{kind: ServiceAccount, name: viewer, namespace: {ns}}}]\n"
        ),
    );
    let token = b.kubectl(&["create", "token", "viewer", "-n", ns]).trim().to_string();
    let kc = |args: &[&str]| {
        let out = Command::new("kubectl").args(args).env("KUBECONFIG", &merged).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    kc(&["config", "set-credentials", "viewer", &format!("--token={token}")]);
    kc(&["config", "set-context", "b-viewer", "--cluster=driftwatch-inv-b", "--user=viewer"]);
    let limited = json(&merged, &["--context", "driftwatch-inv-a", "--context", "b-viewer"]);
    let viewer = limited["clusters"].as_array().unwrap().iter().find(|c| c["context"] == "b-viewer").unwrap().clone();
    assert_eq!(viewer["state"], "forbidden", "{limited:#}");
    assert!(viewer["reason"].as_str().unwrap().contains("forbidden"), "{viewer}");
    assert!(rows(&limited).iter().all(|r| r.starts_with("driftwatch-inv-a/")) && rows(&limited).len() >= 3, "{limited:#}");
    // In its own namespace the same user answers.
    assert_eq!(rows(&json(&merged, &["--context", "b-viewer", "-n", ns])).len(), 3);

    // One cluster stopped: its row says unreachable, the other answers, exit 0.
    b.stop_apiserver();
    let (code, table, _) = inventory(&merged, &["--all-contexts", "-n", ns]);
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("driftwatch-inv-a   inventory   web"), "{table}");
    let down = table.lines().find(|l| l.starts_with("driftwatch-inv-b ")).unwrap_or_else(|| panic!("{table}"));
    assert!(down.contains("unreachable"), "{table}");
    eprintln!("$ driftwatch inventory --all-contexts -n {ns}   (b stopped)\n{table}");
    // Both stopped: exit 1 and a clear message.
    a.stop_apiserver();
    let (code, _, err) = inventory(&merged, &["--all-contexts", "-n", ns]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no cluster answered (3 asked)"), "{err}");
}

#[test]
fn a_context_the_kubeconfig_lacks_is_an_error_row() {
    let (code, _, err) = inventory("/nonexistent/kubeconfig", &["--context", "nowhere"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cluster nowhere: error") || err.contains("no cluster answered"), "{err}");
}
