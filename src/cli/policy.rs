//! Which DriftPolicy covers a release, as `driftwatch check` tells it: the controller's own
//! answer (the release's DriftReport names its policy) first, else the policies in the cluster
//! decided by the controller's rules with its default namespace as the cluster-policy
//! namespace. `check --policy` applies one; without it, `check` says which one it did not.

use std::collections::HashMap;

use kube::Client;
use kube::api::{Api, ListParams};

use crate::api::{DriftPolicy, DriftReport};
use crate::report::{PolicyNote, ReleaseReport};
use crate::controller::policy::{ReleaseFacts, Tenancy, policy_key, winner};
use crate::helm::ReleaseHistory;

/// The controller's namespace when installed as documented: its policies are cluster policies.
pub const DEFAULT_CONTROLLER_NAMESPACE: &str = "driftwatch-system";

/// What the cluster says about policies, read once per `check`: the reports' `policy`
/// (namespace, release) → `ns/name`, and the policies themselves. Either may be missing (no
/// CRDs, no permission): then there is simply nothing to say.
#[derive(Default)]
pub struct PolicyView {
    pub by_report: HashMap<(String, String), String>,
    pub policies: Vec<DriftPolicy>,
    /// API requests made to read them.
    pub requests: usize,
}

impl PolicyView {
    pub async fn read(client: &Client, namespace: Option<&str>) -> PolicyView {
        let reports: Api<DriftReport> = match namespace {
            Some(n) => Api::namespaced(client.clone(), n),
            None => Api::all(client.clone()),
        };
        let by_report = match reports.list(&ListParams::default()).await {
            Ok(list) => list
                .items
                .into_iter()
                .filter_map(|r| {
                    let policy = r.status.as_ref()?.policy.clone()?;
                    Some(((r.metadata.namespace.clone()?, r.metadata.name.clone()?), policy))
                })
                .collect(),
            Err(_) => HashMap::new(),
        };
        let policies = Api::<DriftPolicy>::all(client.clone()).list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
        PolicyView { by_report, policies, requests: 2 }
    }

    /// The policy that covers a checked release (`ns/name`), if any.
    pub fn covering(&self, history: &ReleaseHistory, report: &ReleaseReport) -> Option<String> {
        if let Some(p) = self.by_report.get(&(report.namespace.clone(), report.name.clone())) {
            return Some(p.clone());
        }
        let tenancy = Tenancy { cluster_policy_namespaces: vec![DEFAULT_CONTROLLER_NAMESPACE.to_string()] };
        let labels = history.latest().labels.clone();
        let none = Default::default();
        let facts = ReleaseFacts { namespace: &report.namespace, name: &report.name, chart: Some(&report.chart), labels: &labels, namespace_labels: &none };
        winner(&tenancy, &self.policies, &facts).map(policy_key)
    }
}

/// The note a report carries: the policy applied, or the one that covers it and was not.
pub fn note(applied: Option<&str>, covering: Option<String>) -> Option<PolicyNote> {
    match applied {
        Some(p) => Some(PolicyNote { name: p.to_string(), applied: true }),
        None => covering.map(|name| PolicyNote { name, applied: false }),
    }
}

/// `NS/NAME` → (namespace, name).
pub fn parse_ref(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok((ns.to_string(), name.to_string())),
        _ => Err(format!("--policy {s:?}: expected NAMESPACE/NAME of a DriftPolicy, e.g. platform/production")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_references() {
        assert_eq!(parse_ref("platform/prod"), Ok(("platform".into(), "prod".into())));
        for bad in ["prod", "/prod", "platform/", "a/b/c", ""] {
            assert!(parse_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn notes() {
        assert_eq!(note(Some("a/b"), Some("c/d".into())), Some(PolicyNote { name: "a/b".into(), applied: true }));
        assert_eq!(note(None, Some("c/d".into())), Some(PolicyNote { name: "c/d".into(), applied: false }));
        assert_eq!(note(None, None), None);
    }
}
