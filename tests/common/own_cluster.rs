//! A control plane of a test's own (`tests/cluster/up` with its own state directory, ports and
//! context name), for tests that stop or restart parts of it, or need a second cluster. Stopped
//! with everything it made when the test ends.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::Helm;

pub struct OwnCluster {
    pub name: String,
    pub env: Vec<(String, String)>,
    pub kubeconfig: String,
}

impl OwnCluster {
    /// Starts (or reuses) the control plane `name` (its state in $TMPDIR/`name`, which is also
    /// its context's name) on ports from `port_base`. `node`: with a node of its own, without,
    /// or as the suite's (`DRIFTWATCH_NODE` inherited).
    pub fn start(name: &str, port_base: u16, node: Option<bool>) -> Self {
        let dir = std::env::temp_dir().join(name);
        let mut env: Vec<(String, String)> = vec![("DRIFTWATCH_CLUSTER_DIR".into(), dir.display().to_string()), ("DRIFTWATCH_PORT_BASE".into(), port_base.to_string())];
        if let Some(node) = node {
            env.push(("DRIFTWATCH_NODE".into(), if node { "1" } else { "0" }.into()));
        }
        let out = Command::new(super::repo_root().join("tests/cluster/up")).envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))).output().unwrap();
        assert!(out.status.success(), "control plane {name}: {}", String::from_utf8_lossy(&out.stderr));
        let kubeconfig = String::from_utf8_lossy(&out.stdout).trim().to_string();
        env.push(("KUBECONFIG".into(), kubeconfig.clone()));
        OwnCluster { name: name.into(), env, kubeconfig }
    }

    /// A command with this control plane's environment (KUBECONFIG, state directory, ports).
    pub fn cmd(&self, program: impl Into<PathBuf>) -> Command {
        let mut c = Command::new(program.into());
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.cmd("kubectl").args(args).output().unwrap();
        assert!(out.status.success(), "kubectl {args:?} on {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn try_kubectl(&self, args: &[&str]) -> Option<String> {
        let out: Output = self.cmd("kubectl").args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn kubectl_stdin(&self, args: &[&str], input: &str) {
        use std::io::Write as _;
        let mut child = self.cmd("kubectl").args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl {args:?} on {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
    }

    pub fn helm(&self, helm: Helm, args: &[&str]) -> Output {
        helm.run_env(args, &[("KUBECONFIG", self.kubeconfig.as_str())])
    }

    pub fn helm_ok(&self, helm: Helm, args: &[&str]) {
        let out = self.helm(helm, args);
        assert!(out.status.success(), "helm {args:?} on {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
    }

    /// Runs one of `tests/cluster/`'s scripts against it.
    pub fn script(&self, name: &str, args: &[&str]) {
        let out = self.cmd(super::repo_root().join("tests/cluster").join(name)).args(args).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stops its API server (etcd and the rest stay): the cluster no longer answers.
    pub fn stop_apiserver(&self) {
        let dir = &self.env[0].1;
        let pid = std::fs::read_to_string(format!("{dir}/kube-apiserver.pid")).unwrap();
        let _ = Command::new("kill").arg(pid.trim()).status();
        super::wait_for("the API server to stop", 30, || self.try_kubectl(&["get", "--raw", "/readyz"]).is_none().then_some(()));
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = self.cmd(super::repo_root().join("tests/cluster/down")).output();
    }
}
