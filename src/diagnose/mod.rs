//! Why a release failed or is stuck, and what else is wrong with it: pure functions over
//! evidence that `cluster::evidence` gathers (PRODUCT.md sections 1 and 6).
//!
//! - [`classify`]: the cause of a `failed` or stuck `pending-*` revision, from the revision's
//!   description, its hooks, the namespace's Events and the pods of its workloads, with the
//!   evidence lines it used and the next commands — the workflow an engineer follows by hand
//!   (`helm status`, `helm history`, `helm get manifest --revision N`, the Events sorted by time,
//!   the hook Jobs, the pods).
//! - [`findings`]: the release-level findings (`Failed`, `PartialUpgrade`, `StuckPending`,
//!   `HookOrphans`, `OrphanedResources`, `Stale`) and [`lost_records`].
//!
//! No value of a Secret or of the release's values reaches evidence: the gatherer never reads
//! Secret data, and every line goes through a [`Scrubber`] that knows the release's values.

mod classify;
mod findings;

pub use classify::{Cause, Conflict, already_exists, classify};
pub use findings::{HealthFacts, ago, Thresholds, findings, health_condition, lost_records, partial_state, stuck_in};

use jiff::Timestamp;

/// What was gathered about the newest revision of a release that is not healthy.
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    pub release: String,
    pub namespace: String,
    /// The newest revision and its status.
    pub revision: u32,
    pub status: crate::helm::ReleaseStatus,
    /// Helm's description of the newest revision ("Upgrade \"web\" failed: …").
    pub description: String,
    /// The newest `deployed` revision (what a rollback goes back to), if any.
    pub reference: Option<u32>,
    /// The newest revision's hooks, with what is live of them.
    pub hooks: Vec<HookState>,
    /// Warning Events of the namespace since the revision started, oldest first.
    pub events: Vec<EventLine>,
    /// The pods of the revision's workloads.
    pub pods: Vec<PodState>,
}

/// A hook of the newest revision and its live object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HookState {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// `pre-upgrade`, …
    pub events: Vec<String>,
    /// Helm's record of its last run (`Running`, `Succeeded`, `Failed`, or empty).
    pub phase: String,
    /// The live object exists.
    pub present: bool,
    /// A Job's `Failed` condition (reason: message), or a pod's failure.
    pub failed: Option<String>,
    /// A Job still running (active pods, not complete).
    pub running: bool,
}

/// One Event, as `kubectl get events` shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventLine {
    pub time: Option<Timestamp>,
    pub type_: String,
    pub reason: String,
    /// `Kind/name` of the involved object.
    pub object: String,
    pub message: String,
    pub count: i32,
}

impl EventLine {
    fn line(&self) -> String {
        let count = if self.count > 1 { format!(" (x{})", self.count) } else { String::new() };
        format!("Event {} {} {}: {}{count}", self.type_, self.reason, self.object, self.message)
    }
}

/// A pod of one of the revision's workloads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodState {
    pub name: String,
    pub phase: String,
    pub containers: Vec<ContainerState>,
    /// `PodScheduled=False`: its reason and message.
    pub unschedulable: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerState {
    pub name: String,
    pub image: String,
    /// `waiting.reason` and `waiting.message`.
    pub waiting: Option<(String, String)>,
    /// The last termination: reason and exit code.
    pub terminated: Option<(String, i32)>,
    pub restarts: i32,
}

/// Replaces every value the release was given (and every Secret value of its manifest) in a
/// text with `(redacted)`. Left as they are: values shorter than [`Scrubber::MIN`] characters
/// (words like `true`, `web`, `80` that would make every line unreadable, and no credential),
/// and values written verbatim into the release's objects other than Secrets (names, images,
/// ConfigMap data, hook annotations): those are what every report shows anyway.
#[derive(Clone, Debug, Default)]
pub struct Scrubber {
    secrets: Vec<String>,
}

impl Scrubber {
    pub const MIN: usize = 6;

    /// From the release's user values and the string leaves of the Secrets in its manifest
    /// (`data` decoded from base64, `stringData` as is); `public` is the text of its other
    /// objects (the manifest without Secrets, and its hooks).
    pub fn new(values: Option<&serde_json::Map<String, serde_json::Value>>, manifest_secrets: &[&serde_json::Value], public: &str) -> Self {
        let mut secrets = Vec::new();
        fn leaves(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::String(s) => out.push(s.clone()),
                serde_json::Value::Array(a) => a.iter().for_each(|v| leaves(v, out)),
                serde_json::Value::Object(m) => m.values().for_each(|v| leaves(v, out)),
                _ => {}
            }
        }
        if let Some(values) = values {
            values.values().for_each(|v| leaves(v, &mut secrets));
        }
        for s in manifest_secrets {
            if let Some(data) = s.get("data").and_then(|d| d.as_object()) {
                use base64::Engine as _;
                for v in data.values().filter_map(|v| v.as_str()) {
                    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(v.trim()) {
                        secrets.push(String::from_utf8_lossy(&bytes).into_owned());
                    }
                    secrets.push(v.to_string());
                }
            }
            if let Some(data) = s.get("stringData") {
                leaves(data, &mut secrets);
            }
        }
        secrets.retain(|s| s.trim().chars().count() >= Self::MIN && !public.contains(s.as_str()));
        // Longest first: a value that contains another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Scrubber { secrets }
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "(redacted)");
            }
        }
        out
    }

    /// Scrubs every text of the evidence in place.
    pub fn evidence(&self, e: &mut Evidence) {
        e.description = self.scrub(&e.description);
        for ev in &mut e.events {
            ev.message = self.scrub(&ev.message);
        }
        for h in &mut e.hooks {
            h.failed = h.failed.as_deref().map(|f| self.scrub(f));
        }
        for p in &mut e.pods {
            p.unschedulable = p.unschedulable.as_deref().map(|f| self.scrub(f));
            for c in &mut p.containers {
                if let Some((_, m)) = &mut c.waiting {
                    *m = self.scrub(m);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_scrubber_removes_values_and_secret_data_and_keeps_words() {
        let secret = json!({"kind": "Secret", "data": {"token": "c3VwZXItc2VjcmV0LXRva2Vu"}, "stringData": {"api": "plain-api-key"}});
        let public = "kind: Deployment\nmetadata: {name: shop-frontend}\n";
        let values = json!({"db": {"password": "hunter2-very-secret", "port": "5432"}, "tags": ["web", "production-eu"], "name": "shop-frontend"});
        let s = Scrubber::new(values.as_object(), &[&secret], public);
        let line = "denied: password hunter2-very-secret, token super-secret-token, key plain-api-key, port 5432 in production-eu for web";
        let out = s.scrub(line);
        for leaked in ["hunter2-very-secret", "super-secret-token", "plain-api-key", "production-eu"] {
            assert!(!out.contains(leaked), "{leaked} in {out}");
        }
        // Short words stay readable, and so do values every report shows (an object's name).
        assert!(out.contains("port 5432") && out.ends_with("for web"), "{out}");
        assert_eq!(s.scrub("Deployment shop-frontend"), "Deployment shop-frontend");
    }
}
