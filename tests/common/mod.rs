//! What every end-to-end test needs: a client for the local control plane (started by
//! `tests/cluster/up`, or by `make test`), the real helm binaries, and a throw-away namespace.
//! A test that cannot reach the control plane fails and says how to start it.
#![allow(dead_code)]

pub mod own_cluster;
pub mod proxy;

#[allow(unused_imports)]
pub use own_cluster::OwnCluster;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Config};
use serde_json::Value;

const HOW_TO_START: &str = "start the local control plane first: `make test` does it all, or \
    `tests/cluster/up && eval \"$(tests/cluster/env)\"` in this shell";

/// Helm's major version: the two CLIs are tested side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Helm {
    V3,
    V4,
}

impl Helm {
    pub const ALL: [Helm; 2] = [Helm::V3, Helm::V4];

    pub fn binary(self) -> PathBuf {
        let var = match self {
            Helm::V3 => "DRIFTWATCH_HELM3",
            Helm::V4 => "DRIFTWATCH_HELM4",
        };
        let path = std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("{var} is not set; {HOW_TO_START}"));
        assert!(path.is_file(), "{var}={} does not exist; run tests/cluster/build-tools", path.display());
        path
    }

    pub fn short(self) -> &'static str {
        match self {
            Helm::V3 => "h3",
            Helm::V4 => "h4",
        }
    }

    /// Runs helm with the given arguments; returns its output whatever the exit status.
    pub fn run(self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    /// Runs helm with extra environment (`HELM_DRIVER`, say).
    pub fn run_env(self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(self.binary())
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("could not run helm {self:?}: {e}"))
    }

    /// Runs helm and fails the test, with helm's own words, when it fails.
    pub fn ok(self, args: &[&str]) -> String {
        self.ok_env(args, &[])
    }

    pub fn ok_env(self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.run_env(args, env);
        assert!(
            out.status.success(),
            "helm ({self:?}) {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart(name: &str) -> String {
    repo_root().join("tests/charts").join(name).display().to_string()
}

/// A pinned version from tests/cluster/versions.env.
pub fn pinned(key: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("tests/cluster/versions.env")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing from versions.env"))
        .trim()
        .to_string()
}

/// A client for the local control plane; panics with instructions if it is not reachable.
pub async fn client() -> Client {
    if std::env::var_os("KUBECONFIG").is_none() {
        panic!("KUBECONFIG is not set; {HOW_TO_START}");
    }
    let config = Config::infer()
        .await
        .unwrap_or_else(|e| panic!("cannot load KUBECONFIG: {e}; {HOW_TO_START}"));
    let client = Client::try_from(config).expect("client from kubeconfig");
    if let Err(e) = client.apiserver_version().await {
        panic!("the control plane is not reachable ({e}); {HOW_TO_START}");
    }
    client
}

/// `kubectl edit` of a Deployment's memory limit, as a person would make drift (field manager
/// `kubectl-edit`).
pub fn set_memory(ns: &str, deploy: &str, from: &str, to: &str) {
    let out = Command::new("kubectl")
        .args(["edit", &format!("deployment/{deploy}"), "-n", ns])
        .env("KUBE_EDITOR", format!("sed -i s/memory:\\ {from}/memory:\\ {to}/"))
        .output()
        .unwrap();
    assert!(out.status.success(), "kubectl edit: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl").args(args).output().expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace of one test, deleted (with everything in it) when the test ends.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"driftwatch.io/test": "true"}}
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Blocking on purpose: Drop cannot await, and kubectl does not need the runtime.
        let _ = Command::new("kubectl")
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}

/// Deletes a namespace through the API (for tests that want to wait on it).
pub async fn delete_namespace(client: &Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// Writes a release record as Helm's secret driver would, with this manifest.
pub async fn write_record(client: &kube::Client, ns: &str, name: &str, payload: String) {
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("sh.helm.release.v1.{name}.v1"),
                     "labels": {"owner": "helm", "name": name, "version": "1", "status": "deployed"}},
        "type": "helm.sh/release.v1",
        "stringData": {"release": payload}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &secret).await.unwrap();
}

pub fn record_payload(ns: &str, name: &str, manifest: &str) -> String {
    let rel = serde_json::json!({"name": name, "namespace": ns, "version": 1,
        "info": {"status": "deployed", "last_deployed": "2026-11-01T00:00:00Z", "description": "Install complete"},
        "chart": {"metadata": {"name": "handmade", "version": "0.1.0", "appVersion": "1"}},
        "manifest": manifest});
    String::from_utf8(driftwatch::helm::release::encode_release_json(rel.to_string().as_bytes())).unwrap()
}


/// Polls until `f` returns Some, failing after a generous timeout with what was awaited.
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

// The controller as a process, and what it writes.

/// `driftwatch run` started by a test; killed when dropped.
pub struct ControllerProcess {
    pub child: Child,
    pub metrics_port: u16,
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// N distinct free ports: the listeners are all held until each has its port (one let go before
/// the next bind can be handed the same port again: a run got metrics and health on one port).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

pub fn start_controller(own_ns: &str, cluster_ns: &str, watch: &[&str], log: &str) -> ControllerProcess {
    start_controller_via(own_ns, cluster_ns, watch, log, None)
}

/// The same, talking to the API server through another kubeconfig (a proxy's).
pub fn start_controller_via(own_ns: &str, cluster_ns: &str, watch: &[&str], log: &str, kubeconfig: Option<&str>) -> ControllerProcess {
    start_controller_with(own_ns, cluster_ns, watch, log, kubeconfig, None)
}

/// The same, as a replica with `--leader-elect` named `identity` when one is given.
pub fn start_controller_with(own_ns: &str, cluster_ns: &str, watch: &[&str], log: &str, kubeconfig: Option<&str>, identity: Option<&str>) -> ControllerProcess {
    start_controller_args(own_ns, cluster_ns, watch, log, kubeconfig, identity, &[])
}

/// The same, with more arguments to `driftwatch run` (`--shards 2`).
pub fn start_controller_args(own_ns: &str, cluster_ns: &str, watch: &[&str], log: &str, kubeconfig: Option<&str>, identity: Option<&str>, extra: &[&str]) -> ControllerProcess {
    apply_crds();
    let [metrics_port, health_port] = free_ports();
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_driftwatch"))
        .args([
            "run",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--health-addr",
            &format!("127.0.0.1:{health_port}"),
            "--cluster-policy-namespaces",
            cluster_ns,
            "--watch-namespaces",
            &watch.join(","),
            "--log-format",
            "json",
        ])
        .args(identity.map(|_| "--leader-elect"))
        .args(extra)
        .envs(identity.map(|i| ("POD_NAME", i)))
        .env("POD_NAMESPACE", own_ns)
        .env("KUBECONFIG", kubeconfig.map(str::to_string).unwrap_or_else(|| std::env::var("KUBECONFIG").unwrap_or_default()))
        // Debug lines of the controller module: "object changed" says what a watch re-checked.
        .env("RUST_LOG", "info,driftwatch::controller=debug,kube=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("driftwatch run starts");
    ControllerProcess { child, metrics_port }
}

pub fn report(ns: &str, name: &str) -> Option<Value> {
    let out = Command::new("kubectl").args(["get", "driftreport", name, "-n", ns, "-o", "json"]).output().unwrap();
    out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
}

pub fn condition<'a>(r: &'a Value, type_: &str) -> Option<&'a Value> {
    r["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

pub fn drifted(r: &Value) -> Option<&str> {
    condition(r, "Drifted").and_then(|c| c["status"].as_str())
}

pub fn apply_yaml(yaml: &str) {
    kubectl_stdin(&["apply", "-f", "-"], yaml);
}

/// kubectl with `input` on its standard input (`apply -f -`, a server-side apply as some field
/// manager, …); fails the test with kubectl's own words and the input when it fails.
pub fn kubectl_stdin(args: &[&str], input: &str) {
    use std::io::Write as _;
    let mut child = Command::new("kubectl").args(args).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kubectl {}: {}\n{input}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Installs (or updates) Driftwatch's CRDs, once per test process: tests that start together
/// on a fresh cluster would otherwise race to create them (one gets AlreadyExists).
pub fn apply_crds() {
    static APPLIED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut applied = APPLIED.lock().unwrap_or_else(|e| e.into_inner());
    if *applied {
        return;
    }
    let file = repo_root().join("crds/driftwatch.io.yaml").display().to_string();
    // Another test process may be creating them at this moment: a second try updates them.
    for attempt in 1..=3 {
        let out = Command::new("kubectl").args(["apply", "-f", &file]).output().expect("kubectl runs");
        if out.status.success() {
            *applied = true;
            return;
        }
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(attempt < 3 && said.contains("AlreadyExists"), "kubectl apply -f {file} failed: {said}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A controller's `/metrics` page.
pub fn metrics_text(port: u16) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The value of the first series whose line starts with `line_prefix`.
pub fn metric(port: u16, line_prefix: &str) -> Option<String> {
    let body = metrics_text(port)?;
    body.lines().find(|l| l.starts_with(line_prefix)).map(|l| l.rsplit(' ').next().unwrap().to_string())
}

/// The drifted objects of a report's `resources` (CLI JSON or DriftReport status), as sorted
/// lines of kind, name, state and each field's path, change and manager: two reports with the
/// same lines give the same answer.
pub fn drift_shape(resources: &Value) -> Vec<String> {
    let mut v: Vec<String> = resources
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] != "InSync")
        .map(|r| {
            let fields: Vec<String> = r["fields"].as_array().map(|f| f.iter().map(|f| format!("{}:{}:{}", f["path"], f["change"], f["manager"])).collect()).unwrap_or_default();
            format!("{} {} {} {:?}", r["kind"], r["name"], r["state"], fields)
        })
        .collect();
    v.sort();
    v
}


// `driftwatch check` as a process.

pub fn driftwatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_driftwatch")).args(args).output().expect("driftwatch runs")
}

/// `driftwatch` as a process with `input` on its standard input (`-f -`).
pub fn driftwatch_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_driftwatch")).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// `check RELEASE -n NS -o json --detailed-exitcode` → (exit code, the release's report).
pub fn check(release: &str, ns: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["check", release, "-n", ns, "-o", "json", "--detailed-exitcode"];
    args.extend_from_slice(extra);
    let out = driftwatch(&args);
    let code = out.status.code().unwrap_or(-1);
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check {release}: not JSON ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    (code, doc["releases"][0].clone())
}

pub fn not_in_sync(report: &Value) -> Vec<String> {
    report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] != "InSync")
        .map(|r| format!("{} {} {}: {}", r["kind"], r["name"], r["state"], r))
        .collect()
}

pub fn resource<'a>(report: &'a Value, kind: &str, name: &str) -> &'a Value {
    report["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind && r["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {report}"))
}

pub fn field<'a>(res: &'a Value, path: &str) -> &'a Value {
    res["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no fields in {res}"))
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("no field {path} in {res}"))
}


/// Waits until kube-controller-manager has acted on the release's Deployments (ReplicaSets
/// exist and status is observed), so its writes are part of what is checked.
pub fn wait_for_controllers(ns: &str) {
    for _ in 0..100 {
        let out = kubectl(&["get", "deployments", "-n", ns, "-o", "jsonpath={range .items[*]}{.status.observedGeneration}/{.metadata.generation} {end}"]);
        let rs = kubectl(&["get", "replicasets", "-n", ns, "-o", "name"]);
        let all_observed = !out.trim().is_empty() && out.split_whitespace().all(|p| p.split_once('/').is_some_and(|(a, b)| a == b));
        if all_observed && !rs.trim().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("kube-controller-manager did not observe the Deployments in {ns}");
}

