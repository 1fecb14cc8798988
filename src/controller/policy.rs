//! Which policy covers a release: tenancy (a policy outside the cluster-policy namespaces sees
//! only its own namespace) and precedence (the release's own namespace wins over a cluster
//! policy; ties go to the alphabetically first `namespace/name`). Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::{DriftPolicy, DriftPolicySpec, parse_duration};
use crate::drift::IgnoreRules;

/// A policy as the controller uses it, compiled once per change: durations parsed, ignore
/// rules and selectors checked and compiled, and why it cannot be used if it cannot.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub policy: DriftPolicy,
    /// `namespace/name`.
    pub key: String,
    /// `namespace/name@generation`: what a verdict was made under.
    pub fingerprint: String,
    pub interval: Duration,
    pub heal_after: Duration,
    pub ignore: IgnoreRules,
    /// (reason, message) when the policy may not be used: it then covers no release.
    pub problem: Option<(&'static str, String)>,
}

impl CompiledPolicy {
    pub fn compile(tenancy: &Tenancy, policy: DriftPolicy) -> CompiledPolicy {
        let key = policy_key(&policy);
        let fingerprint = format!("{key}@{}", policy.metadata.generation.unwrap_or_default());
        let spec = &policy.spec;
        let ignore = IgnoreRules::compile(&spec.ignore);
        let problem = problem(tenancy, &policy, ignore.as_ref().err());
        CompiledPolicy {
            key,
            fingerprint,
            interval: spec.interval(),
            heal_after: spec.heal_after(),
            ignore: ignore.unwrap_or_default(),
            problem,
            policy,
        }
    }

    /// How this policy compares a desired object with a live one (its ignore rules, managers
    /// and switches), one object at a time, with no dry-run: the heal's and the findings'
    /// comparisons; the check sets its own key, confirmation, concurrency and reuse on top.
    pub fn check_settings(&self) -> crate::check::CheckSettings<'_> {
        crate::check::CheckSettings {
            ignore_managers: &self.policy.spec.ignore_managers,
            operations_as_drift: self.policy.spec.operations_as_drift,
            confirm: false,
            concurrency: 1,
            ..crate::check::CheckSettings::new(&self.ignore)
        }
    }

    pub fn spec(&self) -> &DriftPolicySpec {
        &self.policy.spec
    }

    pub fn namespace(&self) -> &str {
        self.policy.metadata.namespace.as_deref().unwrap_or_default()
    }

    pub fn usable(&self) -> bool {
        self.problem.is_none()
    }
}

/// Why a policy cannot be used: (reason, message).
fn problem(tenancy: &Tenancy, p: &DriftPolicy, ignore: Option<&crate::drift::ignore::InvalidRule>) -> Option<(&'static str, String)> {
    if let Some(m) = tenancy.denial(p) {
        return Some(("CrossNamespaceDenied", m));
    }
    if let Some(e) = ignore {
        return Some(("InvalidPolicy", e.to_string()));
    }
    if let Some(e) = p.spec.release_selector.namespace_selector.as_ref().and_then(selector_problem) {
        return Some(("InvalidPolicy", format!("releaseSelector.namespaceSelector: {e}")));
    }
    for (field, v) in [
        ("interval", &p.spec.interval),
        ("heal.after", &p.spec.heal.after),
        ("health.pendingTimeout", &p.spec.health.pending_timeout),
        ("health.staleAfter", &p.spec.health.stale_after),
    ] {
        if let Err(e) = parse_duration(v) {
            return Some(("InvalidPolicy", format!("{field}: {e}")));
        }
    }
    None
}

/// What [`winner`] chooses among: a policy as written, or compiled.
pub trait Selecting {
    fn policy(&self) -> &DriftPolicy;
}

impl Selecting for DriftPolicy {
    fn policy(&self) -> &DriftPolicy {
        self
    }
}

impl Selecting for std::sync::Arc<CompiledPolicy> {
    fn policy(&self) -> &DriftPolicy {
        &self.policy
    }
}

/// Where policies may select across namespaces.
#[derive(Clone, Debug, Default)]
pub struct Tenancy {
    pub cluster_policy_namespaces: Vec<String>,
}

impl Tenancy {
    pub fn is_cluster_policy(&self, policy_ns: &str) -> bool {
        self.cluster_policy_namespaces.iter().any(|n| n == policy_ns)
    }

    /// Why a policy may not be used, if it may not (a tenant policy selecting other namespaces).
    pub fn denial(&self, policy: &DriftPolicy) -> Option<String> {
        let ns = policy.metadata.namespace.as_deref().unwrap_or("");
        let sel = &policy.spec.release_selector;
        let crosses = sel.namespaces.iter().any(|n| n != ns) || sel.namespace_selector.is_some();
        (crosses && !self.is_cluster_policy(ns)).then(|| {
            format!(
                "policy {ns}/{} selects releases outside its namespace; only policies in {} may (set --cluster-policy-namespaces)",
                policy.metadata.name.as_deref().unwrap_or(""),
                if self.cluster_policy_namespaces.is_empty() { "the controller's namespace".to_string() } else { self.cluster_policy_namespaces.join(", ") }
            )
        })
    }
}

/// What a policy is matched against.
#[derive(Clone, Debug)]
pub struct ReleaseFacts<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// None before the record is decoded: the chart filter is then not applied.
    pub chart: Option<&'a str>,
    pub labels: &'a BTreeMap<String, String>,
    /// The release namespace's labels (for `namespaceSelector`).
    pub namespace_labels: &'a BTreeMap<String, String>,
}

pub fn policy_matches(tenancy: &Tenancy, policy: &DriftPolicy, r: &ReleaseFacts) -> bool {
    if tenancy.denial(policy).is_some() {
        return false;
    }
    let pns = policy.metadata.namespace.as_deref().unwrap_or("");
    let sel = &policy.spec.release_selector;
    if tenancy.is_cluster_policy(pns) {
        if !sel.namespaces.is_empty() && !sel.namespaces.iter().any(|n| n == r.namespace) {
            return false;
        }
        if let Some(ns_sel) = &sel.namespace_selector {
            if !selector_matches(ns_sel, r.namespace_labels) {
                return false;
            }
        }
    } else if pns != r.namespace {
        return false;
    }
    if !sel.names.is_empty() && !sel.names.iter().any(|g| glob(g, r.name)) {
        return false;
    }
    if let (false, Some(chart)) = (sel.charts.is_empty(), r.chart) {
        if !sel.charts.iter().any(|g| glob(g, chart)) {
            return false;
        }
    }
    sel.match_labels.iter().all(|(k, v)| r.labels.get(k) == Some(v))
}

/// A Kubernetes label selector against a set of labels: every `matchLabels` pair and every
/// `matchExpressions` requirement (`In`, `NotIn`, `Exists`, `DoesNotExist`) must hold. An
/// unknown operator matches nothing ([`selector_problem`] makes such a policy invalid).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    pairs
        && sel.match_expressions.iter().flatten().all(|req| {
            let values = req.values.as_deref().unwrap_or_default();
            match (req.operator.as_str(), labels.get(&req.key)) {
                ("In", Some(v)) => values.contains(v),
                ("In", None) => false,
                ("NotIn", Some(v)) => !values.contains(v),
                ("NotIn", None) => true,
                ("Exists", found) => found.is_some(),
                ("DoesNotExist", found) => found.is_none(),
                _ => false,
            }
        })
}

/// Why a label selector is invalid, as the API server's own validation would say.
pub fn selector_problem(sel: &LabelSelector) -> Option<String> {
    sel.match_expressions.iter().flatten().find_map(|req| {
        let n = req.values.as_ref().map_or(0, Vec::len);
        match req.operator.as_str() {
            "In" | "NotIn" if n == 0 => Some(format!("matchExpressions: operator {} on {:?} needs at least one value", req.operator, req.key)),
            "Exists" | "DoesNotExist" if n > 0 => Some(format!("matchExpressions: operator {} on {:?} takes no values", req.operator, req.key)),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => None,
            other => Some(format!("matchExpressions: unknown operator {other:?} on {:?} (In, NotIn, Exists, DoesNotExist)", req.key)),
        }
    })
}

/// The winning policy among those that match: own namespace first, then `namespace/name` order.
pub fn winner<'p, P: Selecting>(tenancy: &Tenancy, policies: &'p [P], r: &ReleaseFacts) -> Option<&'p P> {
    policies.iter().filter(|p| policy_matches(tenancy, p.policy(), r)).min_by_key(|p| {
        let meta = &p.policy().metadata;
        let ns = meta.namespace.clone().unwrap_or_default();
        (ns != r.namespace, ns, meta.name.clone().unwrap_or_default())
    })
}

pub fn policy_key(p: &DriftPolicy) -> String {
    format!("{}/{}", p.metadata.namespace.as_deref().unwrap_or(""), p.metadata.name.as_deref().unwrap_or(""))
}

/// `*` any run of characters, `?` one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DriftPolicySpec, ReleaseSelector};

    fn policy(ns: &str, name: &str, sel: ReleaseSelector) -> DriftPolicy {
        let mut p = DriftPolicy::new(name, DriftPolicySpec { release_selector: sel, ..Default::default() });
        p.metadata.namespace = Some(ns.into());
        p
    }

    fn facts<'a>(ns: &'a str, name: &'a str, empty: &'a BTreeMap<String, String>) -> ReleaseFacts<'a> {
        ReleaseFacts { namespace: ns, name, chart: Some("my-app"), labels: empty, namespace_labels: empty }
    }

    #[test]
    fn globs() {
        assert!(glob("payments-*", "payments-api"));
        assert!(glob("*", ""));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(glob("*-api-*", "x-api-y"));
        assert!(!glob("payments-*", "billing"));
    }

    #[test]
    fn tenant_policies_see_their_namespace_only() {
        let t = Tenancy { cluster_policy_namespaces: vec!["platform".into()] };
        let e = BTreeMap::new();
        let tenant = policy("team-a", "p", ReleaseSelector::default());
        assert!(policy_matches(&t, &tenant, &facts("team-a", "x", &e)));
        assert!(!policy_matches(&t, &tenant, &facts("team-b", "x", &e)));
        let cross = policy("team-a", "p", ReleaseSelector { namespaces: vec!["team-b".into()], ..Default::default() });
        assert!(t.denial(&cross).unwrap().contains("selects releases outside its namespace"));
        assert!(!policy_matches(&t, &cross, &facts("team-b", "x", &e)));
        assert!(!policy_matches(&t, &cross, &facts("team-a", "x", &e)));
        let cluster = policy("platform", "all", ReleaseSelector { namespaces: vec!["team-b".into()], ..Default::default() });
        assert!(t.denial(&cluster).is_none());
        assert!(policy_matches(&t, &cluster, &facts("team-b", "x", &e)));
        assert!(!policy_matches(&t, &cluster, &facts("team-a", "x", &e)));
    }

    #[test]
    fn own_namespace_wins_then_alphabetical() {
        let t = Tenancy { cluster_policy_namespaces: vec!["platform".into()] };
        let e = BTreeMap::new();
        let ps = vec![
            policy("platform", "b-cluster", ReleaseSelector::default()),
            policy("platform", "a-cluster", ReleaseSelector::default()),
            policy("team-a", "z-own", ReleaseSelector::default()),
        ];
        assert_eq!(policy_key(winner(&t, &ps, &facts("team-a", "x", &e)).unwrap()), "team-a/z-own");
        assert_eq!(policy_key(winner(&t, &ps, &facts("team-b", "x", &e)).unwrap()), "platform/a-cluster");
    }

    fn ns_selector(v: serde_json::Value) -> ReleaseSelector {
        ReleaseSelector { namespace_selector: Some(serde_json::from_value(v).unwrap()), ..Default::default() }
    }

    #[test]
    fn namespace_selectors_with_expressions() {
        let t = Tenancy { cluster_policy_namespaces: vec!["platform".into()] };
        let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        let e = BTreeMap::new();
        let rows: Vec<(serde_json::Value, &[(&str, &str)], bool)> = vec![
            (serde_json::json!({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "stage"]}]}), &[("env", "prod")], true),
            (serde_json::json!({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}), &[("env", "dev")], false),
            (serde_json::json!({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}), &[], false),
            (serde_json::json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}), &[("env", "prod")], true),
            (serde_json::json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}), &[("env", "dev")], false),
            (serde_json::json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}), &[], true),
            (serde_json::json!({"matchExpressions": [{"key": "env", "operator": "Exists"}]}), &[("env", "x")], true),
            (serde_json::json!({"matchExpressions": [{"key": "env", "operator": "Exists"}]}), &[], false),
            (serde_json::json!({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}), &[], true),
            (serde_json::json!({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}), &[("env", "x")], false),
            (serde_json::json!({"matchLabels": {"team": "a"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}), &[("env", "prod")], false),
            (serde_json::json!({"matchLabels": {"team": "a"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}), &[("env", "prod"), ("team", "a")], true),
            (serde_json::json!({"matchExpressions": [{"key": "env", "operator": "Sometimes", "values": ["prod"]}]}), &[("env", "prod")], false),
            (serde_json::json!({}), &[], true),
        ];
        let invalid = |v: serde_json::Value| selector_problem(&serde_json::from_value(v).unwrap());
        assert!(invalid(serde_json::json!({"matchExpressions": [{"key": "env", "operator": "Sometimes"}]})).unwrap().contains("unknown operator"));
        assert!(invalid(serde_json::json!({"matchExpressions": [{"key": "env", "operator": "In", "values": []}]})).unwrap().contains("at least one value"));
        assert!(invalid(serde_json::json!({"matchExpressions": [{"key": "env", "operator": "Exists", "values": ["x"]}]})).unwrap().contains("takes no values"));
        assert_eq!(invalid(serde_json::json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["x"]}]})), None);
        for (sel, ns_labels, want) in rows {
            let p = policy("platform", "p", ns_selector(sel.clone()));
            let l = labels(ns_labels);
            let f = ReleaseFacts { namespace: "apps", name: "x", chart: None, labels: &e, namespace_labels: &l };
            assert_eq!(policy_matches(&t, &p, &f), want, "{sel} on {ns_labels:?}");
        }
    }

    #[test]
    fn policies_compile_once_with_defaults_and_problems() {
        let t = Tenancy { cluster_policy_namespaces: vec!["platform".into()] };
        let mut p = policy("team-a", "p", ReleaseSelector::default());
        p.metadata.generation = Some(3);
        let c = CompiledPolicy::compile(&t, p.clone());
        assert_eq!((c.key.as_str(), c.fingerprint.as_str()), ("team-a/p", "team-a/p@3"));
        assert_eq!(c.interval, Duration::from_secs(300), "the CRD's default, 5m");
        assert_eq!(c.heal_after, Duration::ZERO);
        assert!(c.usable());
        let with = |f: &dyn Fn(&mut DriftPolicy)| {
            let mut q = p.clone();
            f(&mut q);
            CompiledPolicy::compile(&t, q).problem
        };
        assert_eq!(with(&|q| q.spec.interval = "90s".into()), None);
        assert_eq!(CompiledPolicy::compile(&t, { let mut q = p.clone(); q.spec.interval = "90s".into(); q }).interval, Duration::from_secs(90));
        let (reason, message) = with(&|q| q.spec.interval = "soon".into()).unwrap();
        assert_eq!(reason, "InvalidPolicy");
        assert!(message.starts_with("interval:"), "{message}");
        assert!(with(&|q| q.spec.heal.after = "-1m".into()).unwrap().1.starts_with("heal.after:"));
        assert!(with(&|q| q.spec.ignore = vec![Default::default()]).unwrap().1.contains("paths is empty"));
        assert_eq!(with(&|q| q.spec.release_selector.namespaces = vec!["team-b".into()]).unwrap().0, "CrossNamespaceDenied");
        let mut cluster = policy("platform", "c", ns_selector(serde_json::json!({"matchExpressions": [{"key": "env", "operator": "In", "values": []}]})));
        cluster.metadata.generation = Some(1);
        let (reason, message) = CompiledPolicy::compile(&t, cluster).problem.unwrap();
        assert_eq!(reason, "InvalidPolicy");
        assert!(message.starts_with("releaseSelector.namespaceSelector:"), "{message}");
    }

    #[test]
    fn compiled_policies_are_chosen_like_written_ones() {
        let t = Tenancy { cluster_policy_namespaces: vec!["platform".into()] };
        let e = BTreeMap::new();
        let ps: Vec<std::sync::Arc<CompiledPolicy>> = vec![
            policy("platform", "b-cluster", ReleaseSelector::default()),
            policy("platform", "a-cluster", ReleaseSelector::default()),
            policy("team-a", "z-own", ReleaseSelector::default()),
        ]
        .into_iter()
        .map(|p| std::sync::Arc::new(CompiledPolicy::compile(&t, p)))
        .collect();
        assert_eq!(winner(&t, &ps, &facts("team-a", "x", &e)).unwrap().key, "team-a/z-own");
        assert_eq!(winner(&t, &ps, &facts("team-b", "x", &e)).unwrap().key, "platform/a-cluster");
    }

    #[test]
    fn names_charts_labels() {
        let t = Tenancy::default();
        let labels = BTreeMap::from([("team".to_string(), "core".to_string())]);
        let e = BTreeMap::new();
        let p = policy("ns", "p", ReleaseSelector {
            names: vec!["pay*".into()],
            charts: vec!["my-*".into()],
            match_labels: BTreeMap::from([("team".into(), "core".into())]),
            ..Default::default()
        });
        let f = ReleaseFacts { namespace: "ns", name: "payments", chart: Some("my-app"), labels: &labels, namespace_labels: &e };
        assert!(policy_matches(&t, &p, &f));
        assert!(!policy_matches(&t, &p, &ReleaseFacts { name: "billing", ..f.clone() }));
        assert!(!policy_matches(&t, &p, &ReleaseFacts { chart: Some("other"), ..f.clone() }));
        assert!(!policy_matches(&t, &p, &ReleaseFacts { labels: &e, ..f }));
    }
}
