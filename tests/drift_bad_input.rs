//! Bad input gets a clear error and loses nothing: an object of a kind the server does not
//! serve, an object in a namespace the caller may not read, a manifest document that is not
//! YAML, a corrupt release record, an invalid ignore rule. Each is reported where it is; the
//! rest of the release (and the other releases) is still checked; the exit code is 1 only
//! when nothing could be checked.

mod common;

use std::process::{Command, Output};

use common::{TestNamespace, kubectl, record_payload, write_record};
use serde_json::{Value, json};

fn driftwatch_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_driftwatch")).args(args).envs(env.iter().copied()).output().expect("driftwatch runs")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn configmap(name: &str, ns: Option<&str>) -> String {
    let ns = ns.map(|n| format!("\n  namespace: {n}")).unwrap_or_default();
    format!("---\n# Source: handmade/templates/{name}.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}{ns}\ndata:\n  k: v\n")
}

fn create_configmap(name: &str, ns: &str) {
    kubectl(&["create", "configmap", name, "-n", ns, "--from-literal=k=v"]);
}

fn resource<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["resources"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no {name} in {report}"))
}

#[tokio::test]
async fn unknown_kinds_and_bad_documents_are_errors_and_the_rest_is_checked() {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, "badkind").await;
    create_configmap("present", &ns.name);
    let manifest = format!(
        "{}---\n# Source: handmade/templates/gadget.yaml\napiVersion: gadgets.example.com/v1\nkind: Gadget\nmetadata:\n  name: g\n---\n# Source: handmade/templates/broken.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n{}",
        configmap("present", None),
        configmap("absent", None)
    );
    write_record(&client, &ns.name, "odd", record_payload(&ns.name, "odd", &manifest)).await;

    let out = driftwatch_env(&["check", "odd", "-n", &ns.name, "-o", "json", "--detailed-exitcode"], &[]);
    let report = &json_of(&out)["releases"][0];
    assert_eq!(out.status.code(), Some(2), "drift (the absent ConfigMap) was found: {report}");
    assert_eq!(resource(report, "present")["state"], "InSync");
    assert_eq!(resource(report, "absent")["state"], "Missing");
    let gadget = resource(report, "g");
    assert_eq!(gadget["state"], "Error");
    assert_eq!(gadget["message"], "kind Gadget of gadgets.example.com/v1 is not served by this API server");
    let broken = resource(report, "handmade/templates/broken.yaml");
    assert_eq!(broken["state"], "Error");
    assert!(broken["message"].as_str().unwrap().contains("not valid YAML"), "{broken}");
    assert_eq!(report["summary"], json!({"resources": 4, "inSync": 1, "modified": 0, "missing": 1, "added": 0, "errors": 2, "operations": 0}));
}

#[tokio::test]
async fn forbidden_namespaces_are_errors_for_a_restricted_user() {
    let client = common::client().await;
    let home = TestNamespace::new(&client, "restricted").await;
    let other = TestNamespace::new(&client, "offlimits").await;
    create_configmap("mine", &home.name);
    create_configmap("theirs", &other.name);
    let manifest = format!("{}{}", configmap("mine", None), configmap("theirs", Some(&other.name)));
    write_record(&client, &home.name, "split", record_payload(&home.name, "split", &manifest)).await;

    // A user who may read Secrets and ConfigMaps in the release's namespace only.
    kubectl(&["create", "serviceaccount", "reader", "-n", &home.name]);
    kubectl(&["create", "role", "reader", "-n", &home.name, "--verb=get,list", "--resource=secrets,configmaps"]);
    kubectl(&["create", "rolebinding", "reader", "-n", &home.name, "--role=reader", &format!("--serviceaccount={}:reader", home.name)]);
    let token = kubectl(&["create", "token", "reader", "-n", &home.name]);
    let admin = std::fs::read_to_string(std::env::var("KUBECONFIG").unwrap()).unwrap();
    let restricted = admin
        .lines()
        .map(|l| if l.trim_start().starts_with("user: {token:") { format!("  user: {{token: \"{}\"}}", token.trim()) } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, restricted).unwrap();

    let out = driftwatch_env(&["check", "split", "-n", &home.name, "-o", "json"], &[("KUBECONFIG", kc.to_str().unwrap())]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = &json_of(&out)["releases"][0];
    assert_eq!(resource(report, "mine")["state"], "InSync");
    let theirs = resource(report, "theirs");
    assert_eq!(theirs["state"], "Error");
    assert_eq!(theirs["namespace"], other.name.as_str());
    let msg = theirs["message"].as_str().unwrap();
    assert!(msg.starts_with(&format!("cannot read ConfigMap {}/theirs: forbidden", other.name)), "{msg}");
}

#[tokio::test]
async fn a_corrupt_record_is_reported_and_other_releases_are_checked() {
    let client = common::client().await;
    let ns = TestNamespace::new(&client, "corruptcheck").await;
    create_configmap("fine", &ns.name);
    write_record(&client, &ns.name, "good", record_payload(&ns.name, "good", &configmap("fine", None))).await;
    write_record(&client, &ns.name, "broken", "this is not base64 at all!".into()).await;

    let out = driftwatch_env(&["check", "-n", &ns.name, "-o", "json"], &[]);
    assert_eq!(out.status.code(), Some(0), "one release could be checked");
    let doc = json_of(&out);
    let releases = doc["releases"].as_array().unwrap();
    let broken = releases.iter().find(|r| r["name"] == "broken").unwrap();
    let err = broken["error"].as_str().unwrap();
    assert!(err.contains(&format!("secret {}/sh.helm.release.v1.broken.v1", ns.name)) && err.contains("not valid base64"), "{err}");
    let good = releases.iter().find(|r| r["name"] == "good").unwrap();
    assert_eq!(good["summary"]["inSync"], 1);

    // Checking only the broken release checks nothing: exit 1, and the text says why.
    let out = driftwatch_env(&["check", "broken", "-n", &ns.name], &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("NOT CHECKED") && text.contains("not valid base64"), "{text}");
}

#[tokio::test]
async fn bad_arguments_are_refused_clearly() {
    let out = driftwatch_env(&["check", "-A", "--ignore-path", "spec/replicas"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected KIND:POINTER"), "{err}");
    let out = driftwatch_env(&["check", "nosuchrelease", "-n", "default"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("release \"nosuchrelease\" not found in namespace default"));
    // Shards without leader election would be two writers for every release: refused before
    // anything starts. So are no shards at all.
    let out = driftwatch_env(&["run", "--shards", "2"], &[]);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shards 2 needs --leader-elect"), "{err}");
    let out = driftwatch_env(&["run", "--leader-elect", "--shards", "0"], &[]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shards") && err.contains("0 is not in 1..=256"), "{err}");
}
