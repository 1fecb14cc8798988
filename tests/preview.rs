//! `driftwatch preview upgrade` against the real `helm upgrade` (issue 16): drift
//! made for real (a kubectl-edit of a memory limit, a `kubectl scale`, a server-side-apply
//! hotfix with its own manager, a key added by hand, an edited custom resource), previewed from
//! `helm template`, then the real upgrade run: every predicted field is compared with the live
//! state afterwards, and every predicted conflict with the error helm prints. Each case under
//! each apply method: Helm 3, Helm 4 client-side (`--server-side=false`), Helm 4 server-side.

mod common;

use common::{Helm, TestNamespace, kubectl, kubectl_stdin};
use serde_json::Value;

/// How a release is applied: Helm 3 (client-side, a three-way merge), Helm 4 with
/// `--server-side=false` at install (client-side too; its upgrades and rollbacks follow the
/// release's method), Helm 4 by default (server-side apply).
#[derive(Clone, Copy)]
enum Method {
    Helm3,
    Helm4ClientSide,
    Helm4ServerSide,
}

impl Method {
    fn helm(self) -> Helm {
        match self {
            Method::Helm3 => Helm::V3,
            Method::Helm4ClientSide | Method::Helm4ServerSide => Helm::V4,
        }
    }

    fn short(self) -> &'static str {
        match self {
            Method::Helm3 => "h3",
            Method::Helm4ClientSide => "h4c",
            Method::Helm4ServerSide => "h4",
        }
    }

    fn client_side(self) -> bool {
        !matches!(self, Method::Helm4ServerSide)
    }

    /// `helm install` with these arguments, under this method.
    fn install(self, args: &[&str]) {
        let mut args = args.to_vec();
        if let Method::Helm4ClientSide = self {
            args.push("--server-side=false");
        }
        self.helm().ok(&args);
    }
}

const LIGHT: &str = "statefulset.enabled=false,cache.enabled=false,replicaCount=1,web.sidecar.enabled=false,web.resources.requests.cpu=10m,hookJob.enabled=false";

fn preview(helm: Helm, n: &str, extra: &[&str]) -> Value {
    preview_with(helm, n, LIGHT, extra)
}

/// `helm template` with these values, piped to `driftwatch preview upgrade … -o json`.
fn preview_with(helm: Helm, n: &str, values: &str, extra: &[&str]) -> Value {
    let rendered = helm.ok(&["template", "app", &common::chart("fullstack"), "-n", n, "--set", values]);
    let mut args = vec!["preview", "upgrade", "app", "-n", n, "-f", "-", "-o", "json"];
    args.extend_from_slice(extra);
    let out = common::driftwatch_stdin(&args, &rendered);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn live(kind: &str, name: &str, n: &str) -> Option<Value> {
    let out = std::process::Command::new("kubectl").args(["get", kind, name, "-n", n, "-o", "json"]).output().unwrap();
    out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// The drifted fields' rows, as "outcome Kind path".
fn drifted_rows(doc: &Value) -> Vec<String> {
    rows(doc, true)
}

fn rows(doc: &Value, drift: bool) -> Vec<String> {
    doc["fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["drift"].as_bool() == Some(drift))
        .map(|r| format!("{} {} {}", r["outcome"].as_str().unwrap(), r["kind"].as_str().unwrap(), r["path"].as_str().unwrap()))
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort_by(|a, b| a.split_once(' ').map(|x| x.1).cmp(&b.split_once(' ').map(|x| x.1)));
    v
}

/// Each predicted row against the live state after the real operation: (agreed, lines).
/// `only`: compare the rows with these outcomes (all when empty).
fn compare(doc: &Value, n: &str, only: &[&str]) -> (usize, Vec<String>) {
    let mut agreed = 0;
    let mut disagreed = Vec::new();
    for row in doc["fields"].as_array().unwrap() {
        let outcome = row["outcome"].as_str().unwrap();
        if !only.is_empty() && !only.contains(&outcome) {
            continue;
        }
        let kind = row["kind"].as_str().unwrap();
        let name = row["name"].as_str().unwrap();
        let path = row["path"].as_str().unwrap();
        let object = live(&kind.to_lowercase(), name, n);
        let ok = if outcome == "recreated" {
            object.is_some()
        } else {
            let now = object.as_ref().and_then(|o| o.pointer(path).cloned());
            let expected = match outcome {
                "reverted" | "takenOver" | "adopted" | "changed" => row.get("after").cloned(),
                "kept" | "conflict" | "unchanged" => row.get("before").cloned(),
                "removed" => None,
                other => panic!("unexpected outcome {other}"),
            };
            // Quantities may come back normalised; these cases use plain values.
            if now != expected {
                disagreed.push(format!("{kind}/{name} {path}: predicted {outcome} {expected:?}, live {now:?}"));
            }
            now == expected
        };
        if ok {
            agreed += 1;
        } else if outcome == "recreated" {
            disagreed.push(format!("{kind}/{name}: predicted recreated, not there"));
        }
    }
    eprintln!("preview {n}: {} row(s) compared with the live state, {agreed} agree", agreed + disagreed.len());
    (agreed, disagreed)
}

/// Every predicted row against the live state after the real operation: none disagrees.
/// Returns how many were compared.
fn all_agree(doc: &Value, n: &str) -> usize {
    let (agreed, disagreed) = compare(doc, n, &[]);
    assert!(disagreed.is_empty(), "{disagreed:#?}");
    agreed
}

async fn upgrade_as_predicted(method: Method) {
    let helm = method.helm();
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("preview-{}", method.short())).await;
    let n = ns.name.as_str();
    method.install(&["install", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT]);
    kubectl(&["patch", "deploy", "app-fullstack", "-n", n, "--type=json", "-p", r#"[{"op":"replace","path":"/spec/template/spec/containers/0/resources/limits/memory","value":"1Gi"}]"#, "--field-manager=kubectl-edit"]);
    kubectl(&["scale", "deploy", "app-fullstack", "-n", n, "--replicas=2"]);
    kubectl(&["patch", "widget", "app-fullstack", "-n", n, "--type=merge", "-p", r#"{"spec":{"color":"red"}}"#, "--field-manager=kubectl-edit"]);
    kubectl(&["patch", "cm", "app-fullstack", "-n", n, "--type=merge", "-p", r#"{"data":{"extra":"by-hand"}}"#, "--field-manager=kubectl-edit"]);
    kubectl_stdin(&["apply", "--server-side", "--field-manager=hotfix", "--force-conflicts", "-f", "-"], &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: app-fullstack, namespace: {n}}}\ndata: {{greeting: hotfix}}\n"));

    let doc = preview(helm, n, &[]);
    let outcomes = drifted_rows(&doc);
    let upgrade = helm.run(&["upgrade", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT]);
    let said = String::from_utf8_lossy(&upgrade.stderr).to_string();
    match method.client_side() {
        true => {
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
            let summary = doc["summary"].as_str().unwrap();
            assert!(summary.starts_with("this upgrade reverts 3 manual changes (hotfix, kubectl, kubectl-edit, ") && summary.contains(", and keeps 2 changes silently (kubectl-edit, "), "{doc:#}");
            assert!(upgrade.status.success(), "{said}");
            assert_eq!(all_agree(&doc, n), doc["fields"].as_array().unwrap().len());
        }
        false => {
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
            let (_, disagreed) = compare(&doc, n, &["conflict"]);
            assert!(disagreed.is_empty(), "a failed upgrade changed a conflicting field: {disagreed:#?}");
            // With --force-conflicts: taken over.
            let forced = preview(helm, n, &["--force-conflicts"]);
            let takes: Vec<String> = drifted_rows(&forced).iter().map(|r| r.split(' ').next().unwrap().to_string()).collect();
            assert_eq!(takes, ["takenOver", "kept", "takenOver", "takenOver", "takenOver"], "{forced:#}");
            helm.ok(&["upgrade", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT, "--force-conflicts"]);
            assert_eq!(all_agree(&forced, n), forced["fields"].as_array().unwrap().len());
        }
    }
}

#[tokio::test]
async fn helm3_upgrade_does_what_the_preview_says() {
    upgrade_as_predicted(Method::Helm3).await;
}

#[tokio::test]
async fn helm4_client_side_upgrade_does_what_the_preview_says() {
    upgrade_as_predicted(Method::Helm4ClientSide).await;
}

#[tokio::test]
async fn helm4_upgrade_does_what_the_preview_says() {
    upgrade_as_predicted(Method::Helm4ServerSide).await;
}

/// An upgrade that changes the chart's values, over every kind of drift and ownership: a key
/// the new values drop, edited by hand (`removed` client-side; `kept` server-side, where
/// kubectl-edit still owns it); a deleted Service (`recreated`); a custom resource's field
/// edited by hand that the new values change (`reverted` by the two-way merge; a conflict
/// server-side); a ConfigMap key applied by another manager ("gitops") with the chart's own
/// value, not drift, that the new values change (`changed` client-side; a conflict
/// server-side); a memory limit edited to the value the new values set (`adopted`); and
/// replicas an autoscaler set, which Kubernetes records no owner for (nothing to say, and no
/// conflict when the new values set replicas).
async fn changes_as_predicted(method: Method) {
    let helm = method.helm();
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("preview-ch-{}", method.short())).await;
    let n = ns.name.as_str();
    let chart = common::chart("fullstack");
    let old_values = format!("{LIGHT},autoscaling.enabled=true,config.data.tier=gold");
    method.install(&["install", "app", &chart, "-n", n, "--set", &old_values]);
    // The autoscaler brings the Deployment to its minReplicas (2) through the scale subresource.
    common::wait_for("the autoscaler to scale to 2", 90, || (kubectl(&["get", "deploy", "app-fullstack", "-n", n, "-o", "jsonpath={.spec.replicas}"]) == "2").then_some(()));
    kubectl(&["patch", "cm", "app-fullstack", "-n", n, "--type=merge", "-p", r#"{"data":{"tier":"platinum"}}"#, "--field-manager=kubectl-edit"]);
    kubectl(&["delete", "svc", "app-fullstack", "-n", n]);
    kubectl(&["patch", "widget", "app-fullstack", "-n", n, "--type=merge", "-p", r#"{"spec":{"color":"red"}}"#, "--field-manager=kubectl-edit"]);
    kubectl_stdin(&["apply", "--server-side", "--field-manager=gitops", "-f", "-"], &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: app-fullstack, namespace: {n}}}\ndata: {{greeting: hello}}\n"));
    common::set_memory(n, "app-fullstack", "512Mi", "1Gi");

    let new_values = format!("{LIGHT},replicaCount=3,widget.color=green,config.data.greeting=bonjour,web.resources.limits.memory=1Gi");
    let doc = preview_with(helm, n, &new_values, &[]);
    let owned = sorted(rows(&doc, false));
    let upgrade = |extra: &[&str]| {
        let mut args = vec!["upgrade", "app", chart.as_str(), "-n", n, "--set", new_values.as_str()];
        args.extend_from_slice(extra);
        helm.run(&args)
    };
    match method.client_side() {
        true => {
            assert_eq!(
                sorted(drifted_rows(&doc)),
                ["removed ConfigMap /data/tier", "adopted Deployment /spec/template/spec/containers/0/resources/limits/memory", "recreated Service ", "reverted Widget /spec/color"],
                "{doc:#}"
            );
            // Under an object Helm 3 made, the autoscaler's write through `scale` is recorded:
            // the new values' replicas overwrite it.
            assert_eq!(owned, ["changed ConfigMap /data/greeting", "changed Deployment /spec/replicas"], "{doc:#}");
            let summary = doc["summary"].as_str().unwrap();
            for part in ["reverts 1 manual change (kubectl-edit, ", "removes 1 drifted field (kubectl-edit, ", "recreates 1 missing object", "adopts 1 change as desired (kubectl-edit, ", "overwrites 2 fields another manager owns (gitops, kube-controller-manager)"] {
                assert!(summary.contains(part), "{part:?} not in {summary:?}");
            }
            let done = upgrade(&[]);
            assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
            assert_eq!(all_agree(&doc, n), 6);
        }
        false => {
            assert_eq!(
                sorted(drifted_rows(&doc)),
                ["kept ConfigMap /data/tier", "adopted Deployment /spec/template/spec/containers/0/resources/limits/memory", "recreated Service ", "conflict Widget /spec/color"],
                "{doc:#}"
            );
            // Under an object Helm 4 applied, Kubernetes records no owner for the autoscaler's
            // replicas: nothing to predict, and no conflict on them.
            assert_eq!(owned, ["conflict ConfigMap /data/greeting"], "{doc:#}");
            let summary = doc["summary"].as_str().unwrap();
            assert!(summary.contains("will fail on 2 conflicts (with ") && summary.contains("gitops") && summary.contains("kubectl-edit"), "{doc:#}");
            let failed = upgrade(&[]);
            let said = String::from_utf8_lossy(&failed.stderr).to_string();
            assert!(!failed.status.success(), "the predicted conflicts did not happen");
            for (manager, field) in [("gitops", ".data.greeting"), ("kubectl-edit", ".spec.color")] {
                assert!(said.contains(&format!("\"{manager}\"")) && said.contains(field), "helm does not name {manager} on {field}: {said}");
            }
            assert!(!said.contains(".spec.replicas"), "a conflict on replicas nobody owns: {said}");
            let (_, disagreed) = compare(&doc, n, &["conflict"]);
            assert!(disagreed.is_empty(), "a failed upgrade changed a conflicting field: {disagreed:#?}");
            let forced = preview_with(helm, n, &new_values, &["--force-conflicts"]);
            assert_eq!(rows(&forced, false), ["takenOver ConfigMap /data/greeting"], "{forced:#}");
            assert!(drifted_rows(&forced).contains(&"takenOver Widget /spec/color".to_string()), "{forced:#}");
            let done = upgrade(&["--force-conflicts"]);
            assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
            assert_eq!(all_agree(&forced, n), 5);
        }
    }
    // The replicas nobody owned are the new values' (no conflict stopped them).
    assert_eq!(kubectl(&["get", "deploy", "app-fullstack", "-n", n, "-o", "jsonpath={.spec.replicas}"]), "3");
}

#[tokio::test]
async fn helm3_changes_do_what_the_preview_says() {
    changes_as_predicted(Method::Helm3).await;
}

#[tokio::test]
async fn helm4_client_side_changes_do_what_the_preview_says() {
    changes_as_predicted(Method::Helm4ClientSide).await;
}

#[tokio::test]
async fn helm4_changes_do_what_the_preview_says() {
    changes_as_predicted(Method::Helm4ServerSide).await;
}

/// The seed's story: a memory limit edited after two upgrades; the rollback to the first
/// revision, previewed, then run.
async fn rollback_as_predicted(method: Method) {
    let helm = method.helm();
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("preview-rb-{}", method.short())).await;
    let n = ns.name.as_str();
    method.install(&["install", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT]);
    helm.ok(&["upgrade", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT, "--set", "config.data.greeting=bonjour"]);
    helm.ok(&["upgrade", "app", &common::chart("fullstack"), "-n", n, "--set", LIGHT, "--set", "config.data.greeting=hola"]);
    common::set_memory(n, "app-fullstack", "512Mi", "1Gi");
    // The text a person reads: the edit, who made it and how long ago, what the rollback does.
    let text = common::driftwatch(&["preview", "rollback", "app", "1", "-n", n]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(text.contains("/spec/template/spec/containers/0/resources/limits/memory") && text.contains("changed by kubectl-edit ") && text.contains(" ago, at "), "{text}");
    let out = common::driftwatch(&["preview", "rollback", "app", "1", "-n", n, "-o", "json", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &doc["fields"][0];
    assert_eq!((row["path"].as_str(), row["manager"].as_str()), (Some("/spec/template/spec/containers/0/resources/limits/memory"), Some("kubectl-edit")), "{doc:#}");
    assert!(row["age"].as_str().is_some_and(|a| a.ends_with(" ago")), "{doc:#}");
    let rollback = helm.run(&["rollback", "app", "1", "-n", n]);
    let expected = if method.client_side() { "reverted" } else { "conflict" };
    assert_eq!(row["outcome"], expected, "{doc:#}");
    match row["outcome"].as_str().unwrap() {
        "reverted" => {
            assert!(rollback.status.success(), "{}", String::from_utf8_lossy(&rollback.stderr));
            assert!(doc["summary"].as_str().unwrap().starts_with("this rollback reverts 1 manual change (kubectl-edit, "), "{doc:#}");
        }
        "conflict" => {
            assert!(!rollback.status.success(), "a predicted conflict did not happen");
            assert!(String::from_utf8_lossy(&rollback.stderr).contains("\"kubectl-edit\""), "{}", String::from_utf8_lossy(&rollback.stderr));
        }
        other => panic!("unexpected {other}: {doc:#}"),
    }
    assert_eq!(all_agree(&doc, n), doc["fields"].as_array().unwrap().len());
}

#[tokio::test]
async fn helm3_rollback_does_what_the_preview_says() {
    rollback_as_predicted(Method::Helm3).await;
}

#[tokio::test]
async fn helm4_client_side_rollback_does_what_the_preview_says() {
    rollback_as_predicted(Method::Helm4ClientSide).await;
}

#[tokio::test]
async fn helm4_rollback_does_what_the_preview_says() {
    rollback_as_predicted(Method::Helm4ServerSide).await;
}

/// `helm driftwatch …` as a plugin installed with `helm plugin install` from the repository
/// (plugin.yaml): the upgrade is rendered by the user's own helm, and the preview is the one
/// `helm template | driftwatch preview upgrade -f -` gives; helm's `-n` and `--kube-context`
/// reach driftwatch.
async fn plugin_previews(helm: Helm) {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, &format!("preview-plugin-{}", helm.short())).await;
    let n = ns.name.as_str();
    let chart = common::chart("fullstack");
    helm.ok(&["install", "app", &chart, "-n", n, "--set", LIGHT]);
    kubectl(&["scale", "deploy", "app-fullstack", "-n", n, "--replicas=2"]);

    // Helm's own data directory for this test (Helm 4 installs a local plugin under
    // $HELM_DATA_HOME/plugins, Helm 3 under $HELM_PLUGINS: both point there).
    // Removed when the test ends, passed or not.
    let data_dir = tempfile::Builder::new().prefix("driftwatch-helm-data-").tempdir().unwrap();
    let data = data_dir.path().to_path_buf();
    std::fs::create_dir_all(data.join("plugins")).unwrap();
    let (data_dir, plugins_dir) = (data.display().to_string(), data.join("plugins").display().to_string());
    let env = [("HELM_DATA_HOME", data_dir.as_str()), ("HELM_PLUGINS", plugins_dir.as_str()), ("DRIFTWATCH_BIN", env!("CARGO_BIN_EXE_driftwatch"))];
    let root = common::repo_root().display().to_string();
    let installed = helm.ok_env(&["plugin", "install", &root], &env);
    assert!(installed.contains("Installed plugin: driftwatch"), "{installed}");
    assert!(helm.ok_env(&["plugin", "list"], &env).contains("driftwatch"));

    // The plugin's preview is the pipeline's, and --detailed-exitcode reaches driftwatch.
    let out = helm.run_env(&["driftwatch", "preview", "upgrade", "app", &chart, "-n", n, "--set", LIGHT, "-o", "json", "--detailed-exitcode"], &env);
    assert_eq!(out.status.code(), Some(2), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let via_plugin: Value = serde_json::from_slice(&out.stdout).unwrap();
    let piped = preview(helm, n, &[]);
    let shape = |d: &Value| d["fields"].as_array().unwrap().iter().map(|r| (r["path"].clone(), r["outcome"].clone(), r["before"].clone(), r["after"].clone())).collect::<Vec<_>>();
    assert_eq!(shape(&via_plugin), shape(&piped));
    let expected = if helm == Helm::V3 { "reverted" } else { "conflict" };
    assert_eq!(drifted_rows(&via_plugin), [format!("{expected} Deployment /spec/replicas")], "{via_plugin:#}");
    // Text, with helm's flags after CHART (values with spaces survive) and helm's own -n.
    let out = helm.run_env(&["-n", n, "driftwatch", "preview", "upgrade", "app", &chart, "--set", LIGHT, "--set-string", "config.data.greeting=hello there"], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("{n}/app: this upgrade")) && text.contains("Deployment/app-fullstack /spec/replicas"), "{text}");
    // Any other command goes to driftwatch, in helm's namespace and kube context.
    let context = kubectl(&["config", "current-context"]).trim().to_string();
    let out = helm.run_env(&["-n", n, "--kube-context", &context, "driftwatch", "check", "app", "-o", "json"], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let checked: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(checked["releases"][0]["namespace"], n);
    // A context the kubeconfig lacks: a clear error, nothing read.
    let out = helm.run_env(&["-n", n, "--kube-context", "no-such-context", "driftwatch", "check", "app"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no usable context \"no-such-context\""), "{}", String::from_utf8_lossy(&out.stderr));
    // A failing render says where the flags went.
    let out = helm.run_env(&["driftwatch", "preview", "upgrade", "app", "/no/such/chart", "-n", n], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("helm template failed"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn helm3_plugin_previews_an_upgrade() {
    plugin_previews(Helm::V3).await;
}

#[tokio::test]
async fn helm4_plugin_previews_an_upgrade() {
    plugin_previews(Helm::V4).await;
}
