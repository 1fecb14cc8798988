//! The controller under failure, on a control plane of its own (it restarts the API server,
//! which must not disturb the other tests): two replicas with --leader-elect, exactly one
//! writes; killing it, the other takes over; an API server restart is survived without a
//! controller restart, and reports are neither lost nor duplicated.

mod common;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Instant;

use common::{Helm, OwnCluster, wait_for};

struct Replica {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Replica {
    fn writes(&self) -> usize {
        std::fs::read_to_string(&self.log).unwrap_or_default().matches("DriftReport written").count()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_replica(c: &OwnCluster, name: &str) -> Replica {
    let log = std::env::temp_dir().join(format!("driftwatch-ha-{name}.log"));
    let port = |_: ()| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = c
        .cmd(env!("CARGO_BIN_EXE_driftwatch"))
        .args(["run", "--leader-elect", "--watch-namespaces", "app,dw"])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", port(())), "--health-addr", &format!("127.0.0.1:{}", port(()))])
        .env("POD_NAMESPACE", "dw")
        .env("POD_NAME", name)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Replica { name: name.into(), child, log }
}


fn drift_status(c: &OwnCluster) -> Option<String> {
    c.try_kubectl(&["get", "driftreport", "shop", "-n", "app", "-o", "jsonpath={.status.drift}"]).filter(|s| !s.is_empty())
}

fn set_memory(c: &OwnCluster, from: &str, to: &str) {
    let out = c
        .cmd("kubectl")
        .args(["edit", "deployment/shop-fullstack", "-n", "app"])
        .env("KUBE_EDITOR", format!("sed -i s/memory:\\ {from}/memory:\\ {to}/"))
        .output()
        .unwrap();
    assert!(out.status.success(), "kubectl edit: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn leader_election_takeover_and_api_server_restart() {
    let c = OwnCluster::start("driftwatch-ha-cluster", 26700, None);
    c.kubectl(&["apply", "-f", &common::repo_root().join("crds/driftwatch.io.yaml").display().to_string()]);
    c.kubectl(&["create", "namespace", "app"]);
    c.kubectl(&["create", "namespace", "dw"]);
    let out = c.cmd(Helm::V3.binary()).args(["install", "shop", &common::chart("fullstack"), "-n", "app", "--set", "widget.enabled=false"]).output().unwrap();
    assert!(out.status.success(), "helm install: {}", String::from_utf8_lossy(&out.stderr));

    let mut replicas = vec![start_replica(&c, "replica-a"), start_replica(&c, "replica-b")];
    let mut policy = c.cmd("kubectl").args(["apply", "-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    use std::io::Write as _;
    policy.stdin.take().unwrap().write_all(b"apiVersion: driftwatch.io/v1alpha1\nkind: DriftPolicy\nmetadata: {name: all, namespace: dw}\nspec: {interval: 1m}\n").unwrap();
    assert!(policy.wait().unwrap().success());

    assert_eq!(wait_for("the first report", 60, || drift_status(&c)), "InSync");
    let holder = wait_for("a lease holder", 30, || {
        c.try_kubectl(&["get", "lease", "driftwatch-controller", "-n", "dw", "-o", "jsonpath={.spec.holderIdentity}"]).filter(|h| !h.is_empty())
    });
    let leader = replicas.iter().position(|r| r.name == holder).expect("the holder is one of ours");
    let follower = 1 - leader;
    wait_for("the leader's write in its log", 10, || (replicas[leader].writes() > 0).then_some(()));
    assert_eq!(replicas[follower].writes(), 0, "the follower wrote a report");

    // Kill the leader outright (no hand-over): the follower takes the lease when it expires.
    let killed = Instant::now();
    replicas[leader].child.kill().unwrap();
    let _ = replicas[leader].child.wait();
    let new_holder = wait_for("takeover", 60, || {
        c.try_kubectl(&["get", "lease", "driftwatch-controller", "-n", "dw", "-o", "jsonpath={.spec.holderIdentity}"]).filter(|h| *h != holder && !h.is_empty())
    });
    let takeover = killed.elapsed();
    assert_eq!(new_holder, replicas[follower].name);
    set_memory(&c, "512Mi", "1Gi");
    assert_eq!(wait_for("Drifted after takeover", 60, || drift_status(&c).filter(|s| s == "Drifted")), "Drifted");
    // The log line follows the write and its Events: the status may be read before it.
    wait_for("the new leader's write in its log", 10, || (replicas[follower].writes() > 0).then_some(()));
    eprintln!("leader takeover after a kill: {} ms (lease duration 10 s)", takeover.as_millis());

    // The API server goes away and comes back; the controller carries on without a restart.
    c.script("restart-apiserver", &["3"]);
    set_memory(&c, "1Gi", "512Mi");
    assert_eq!(wait_for("InSync after the API server restart", 90, || drift_status(&c).filter(|s| s == "InSync")), "InSync");
    assert!(replicas[follower].child.try_wait().unwrap().is_none(), "the controller exited");
    let reports = c.kubectl(&["get", "driftreports", "-n", "app", "-o", "name"]);
    assert_eq!(reports.lines().collect::<Vec<_>>(), vec!["driftreport.driftwatch.io/shop"], "no report lost or duplicated");
    replicas.clear();
}
