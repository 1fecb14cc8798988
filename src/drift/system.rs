//! Fields Kubernetes' own components write outside `status` by design: the reviewed table of
//! which component (under which `managedFields` manager), on which kind, at which paths, and
//! when. A field in this table is the controller's, not drift.
//!
//! Reviewed against the sources of the Kubernetes version the tests pin
//! (`tests/cluster/versions.env`); `docs/kubernetes-writers.md` is the review, writer by writer,
//! and each row here names where its write happens. Writes through the
//! `status` subresource are never drift and need no row. Anything else a system component
//! writes is reported like any other manager's change: the table is the whole list of
//! exceptions, so a new one is a reviewed row here, not a guess.

use serde_json::Value;

use super::managed::FieldKey;

/// When a row applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applies {
    /// The path belongs to the component whatever the manifest says: never compared.
    Always,
    /// The component fills the path when the manifest leaves it out: not `Added` drift. A
    /// manifest that sets the path is still compared (a differing live value is `Modified`).
    WhenUnset,
}

/// One reviewed writer.
#[derive(Clone, Copy, Debug)]
pub struct SystemField {
    /// The component and controller, for people.
    pub component: &'static str,
    /// The `managedFields` manager it writes as; `None` for `Always` rows, which hold whoever
    /// writes the path (the component overwrites any other writer).
    pub manager: Option<&'static str>,
    /// The subresource it writes through (`scale`), if any.
    pub subresource: Option<&'static str>,
    /// API group (`""` for the core group) and kinds (`*`: any).
    pub group: &'static str,
    pub kinds: &'static [&'static str],
    /// JSON pointers (RFC 6901); `*` stands for one segment (a map key or a list item). The
    /// row covers everything under them.
    pub paths: &'static [&'static str],
    pub applies: Applies,
    /// A condition on the manifest's object (`None`: always).
    pub when: Option<fn(&Value) -> bool>,
    /// Why, and where in Kubernetes' sources.
    pub why: &'static str,
}

fn has_aggregation_rule(desired: &Value) -> bool {
    desired.get("aggregationRule").is_some_and(|v| !v.is_null())
}

fn is_service_account_token(desired: &Value) -> bool {
    desired.get("type").and_then(Value::as_str) == Some("kubernetes.io/service-account-token")
}

/// The table. Keep each row's `why` pointing at the code that writes the field.
pub const SYSTEM_FIELDS: &[SystemField] = &[
    SystemField {
        component: "kube-controller-manager: clusterrole-aggregation controller",
        manager: None,
        subresource: None,
        group: "rbac.authorization.k8s.io",
        kinds: &["ClusterRole"],
        paths: &["/rules"],
        applies: Applies::Always,
        when: Some(has_aggregation_rule),
        why: "a ClusterRole with aggregationRule has its rules computed from the selected roles and applied \
              (server-side apply, field manager clusterrole-aggregation-controller, forced); other writes are stomped \
              (pkg/controller/clusterroleaggregation/clusterroleaggregation_controller.go)",
    },
    SystemField {
        component: "kube-controller-manager: horizontal pod autoscaler",
        manager: Some("kube-controller-manager"),
        subresource: Some("scale"),
        group: "apps",
        kinds: &["Deployment", "StatefulSet", "ReplicaSet"],
        paths: &["/spec/replicas"],
        applies: Applies::WhenUnset,
        when: None,
        why: "an HPA sets the replica count through the scale subresource when the chart leaves replicas to it \
              (pkg/controller/podautoscaler/horizontal.go:895-903; the scale handler takes spec.replicas from every \
              other manager, apimachinery pkg/util/managedfields/scalehandler.go:92-159); a chart that sets replicas \
              and is scaled by an HPA still shows the difference, by kube-controller-manager via scale",
    },
    SystemField {
        component: "kube-controller-manager: horizontal pod autoscaler",
        manager: Some("kube-controller-manager"),
        subresource: Some("scale"),
        group: "",
        kinds: &["ReplicationController"],
        paths: &["/spec/replicas"],
        applies: Applies::WhenUnset,
        when: None,
        why: "as for apps workloads (pkg/controller/podautoscaler/horizontal.go:895-903)",
    },
    SystemField {
        component: "kube-controller-manager: service account tokens controller",
        manager: Some("kube-controller-manager"),
        subresource: None,
        group: "",
        kinds: &["Secret"],
        paths: &["/data/token", "/data/ca.crt", "/data/namespace", "/metadata/annotations/kubernetes.io~1service-account.uid"],
        applies: Applies::WhenUnset,
        when: Some(is_service_account_token),
        why: "a Secret of type kubernetes.io/service-account-token is filled with the token, the CA, the namespace and \
              the account's uid (pkg/controller/serviceaccount/tokens_controller.go:364-444)",
    },
    SystemField {
        component: "kube-controller-manager: legacy service account token cleaner",
        manager: Some("kube-controller-manager"),
        subresource: None,
        group: "",
        kinds: &["Secret"],
        paths: &["/metadata/labels/kubernetes.io~1legacy-token-invalid-since"],
        applies: Applies::WhenUnset,
        when: Some(is_service_account_token),
        why: "an unused auto-generated legacy token is marked invalid before it is deleted \
              (pkg/controller/serviceaccount/legacy_serviceaccount_token_cleaner.go:139-208)",
    },
    SystemField {
        component: "kube-apiserver: legacy service account token tracking",
        manager: None,
        subresource: None,
        group: "",
        kinds: &["Secret"],
        paths: &["/metadata/labels/kubernetes.io~1legacy-token-last-used"],
        applies: Applies::Always,
        when: Some(is_service_account_token),
        why: "the API server stamps the day a legacy token was last used (pkg/serviceaccount/legacy.go:40)",
    },
    SystemField {
        component: "kube-controller-manager: persistent volume binder",
        manager: Some("kube-controller-manager"),
        subresource: None,
        group: "",
        kinds: &["PersistentVolumeClaim"],
        paths: &[
            "/spec/volumeName",
            "/spec/storageClassName",
            "/metadata/annotations/pv.kubernetes.io~1bind-completed",
            "/metadata/annotations/pv.kubernetes.io~1bound-by-controller",
            "/metadata/annotations/pv.kubernetes.io~1migrated-to",
            "/metadata/annotations/volume.beta.kubernetes.io~1storage-provisioner",
            "/metadata/annotations/volume.kubernetes.io~1storage-provisioner",
        ],
        applies: Applies::WhenUnset,
        when: None,
        why: "binding and provisioning a claim, and the retroactive default StorageClass \
              (pkg/controller/volume/persistentvolume/pv_controller.go:331-362,1037-1086; pv_controller_base.go:636-658)",
    },
    SystemField {
        component: "kube-controller-manager: persistent volume binder",
        manager: Some("kube-controller-manager"),
        subresource: None,
        group: "",
        kinds: &["PersistentVolume"],
        paths: &[
            "/spec/claimRef",
            "/metadata/annotations/pv.kubernetes.io~1bound-by-controller",
            "/metadata/annotations/pv.kubernetes.io~1migrated-to",
            "/metadata/finalizers",
        ],
        applies: Applies::WhenUnset,
        when: None,
        why: "binding a volume to a claim, and its kubernetes.io/pv-controller finalizer \
              (pkg/controller/volume/persistentvolume/pv_controller.go:996-1032,1534-1561)",
    },
    SystemField {
        component: "kube-scheduler: volume binding",
        manager: Some("kube-scheduler"),
        subresource: None,
        group: "",
        kinds: &["PersistentVolumeClaim"],
        paths: &["/metadata/annotations/volume.kubernetes.io~1selected-node"],
        applies: Applies::WhenUnset,
        when: None,
        why: "delayed binding names the node the pod was scheduled to \
              (pkg/scheduler/framework/plugins/volumebinding/binder.go, BindPodVolumes)",
    },
    SystemField {
        component: "kube-scheduler: volume binding",
        manager: Some("kube-scheduler"),
        subresource: None,
        group: "",
        kinds: &["PersistentVolume"],
        paths: &["/spec/claimRef", "/metadata/annotations/pv.kubernetes.io~1bound-by-controller"],
        applies: Applies::WhenUnset,
        when: None,
        why: "pre-binding a volume for a scheduled pod (pkg/scheduler/framework/plugins/volumebinding/binder.go, \
              BindPodVolumes)",
    },
];

/// Whether a pointer pattern (with `*` segments) covers a path given as segments.
fn covers(pattern: &str, path: &[String]) -> bool {
    let pat: Vec<String> = pattern.split('/').skip(1).map(unescape).collect();
    pat.len() <= path.len() && pat.iter().zip(path).all(|(p, s)| p == "*" || p == s)
}

fn unescape(s: &str) -> String {
    s.replace("~1", "/").replace("~0", "~")
}

fn segments_of_pointer(pointer: &str) -> Vec<String> {
    pointer.split('/').skip(1).map(unescape).collect()
}

fn segments_of_field_path(path: &[FieldKey]) -> Vec<String> {
    path.iter()
        .map(|k| match k {
            FieldKey::Field(f) => f.clone(),
            _ => "*".to_string(),
        })
        .collect()
}

fn rows_for<'a>(api_version: &'a str, kind: &'a str, desired: &'a Value) -> impl Iterator<Item = &'static SystemField> + 'a {
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    SYSTEM_FIELDS.iter().filter(move |r| {
        r.group == group && (r.kinds.contains(&"*") || r.kinds.contains(&kind)) && r.when.is_none_or(|w| w(desired))
    })
}

/// Pointers never compared for this object (the `Always` rows that apply to it).
pub fn always_owned(api_version: &str, kind: &str, desired: &Value) -> Vec<&'static str> {
    rows_for(api_version, kind, desired).filter(|r| r.applies == Applies::Always).flat_map(|r| r.paths.iter().copied()).collect()
}

/// Whether a field the manifest leaves out, owned live by `manager` (through `subresource`),
/// is a system component's by design.
pub fn fills(api_version: &str, kind: &str, desired: &Value, manager: &str, subresource: Option<&str>, path: &[FieldKey]) -> bool {
    let segments = segments_of_field_path(path);
    rows_for(api_version, kind, desired).any(|r| {
        let by = match r.applies {
            Applies::Always => true,
            Applies::WhenUnset => r.manager == Some(manager) && r.subresource == subresource,
        };
        by && r.paths.iter().any(|p| covers(p, &segments))
    })
}

/// Whether a pointer (into the desired or live object) is covered by an `Always` row.
pub fn always_covers(api_version: &str, kind: &str, desired: &Value, pointer: &str) -> bool {
    let segments = segments_of_pointer(pointer);
    always_owned(api_version, kind, desired).iter().any(|p| covers(p, &segments))
}

/// The managers of the table: Kubernetes' own components, never candidates for a change a
/// person made.
pub fn is_system_manager(manager: &str) -> bool {
    matches!(manager, "kube-controller-manager" | "kube-scheduler" | "kubelet" | "kube-apiserver" | "clusterrole-aggregation-controller")
        || SYSTEM_FIELDS.iter().any(|r| r.manager == Some(manager))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(s: &str) -> FieldKey {
        FieldKey::Field(s.into())
    }

    #[test]
    fn every_row_is_well_formed() {
        for r in SYSTEM_FIELDS {
            assert!(!r.paths.is_empty() && r.paths.iter().all(|p| p.starts_with('/')), "{}", r.component);
            assert!(!r.kinds.is_empty(), "{}", r.component);
            assert!(!r.why.is_empty() && r.why.contains(".go"), "{}: say where in Kubernetes' sources", r.component);
            match r.applies {
                Applies::Always => assert!(r.manager.is_none(), "{}: an Always row holds the path whoever writes it", r.component),
                Applies::WhenUnset => assert!(r.manager.is_some(), "{}: a WhenUnset row names the manager it excuses", r.component),
            }
            assert_ne!(r.subresource, Some("status"), "{}: status writes need no row", r.component);
        }
    }

    #[test]
    fn aggregated_cluster_role_rules_only_with_an_aggregation_rule() {
        let aggregated = json!({"aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"a": "b"}}]}});
        assert_eq!(always_owned("rbac.authorization.k8s.io/v1", "ClusterRole", &aggregated), vec!["/rules"]);
        assert!(always_covers("rbac.authorization.k8s.io/v1", "ClusterRole", &aggregated, "/rules/0/verbs"));
        assert!(always_owned("rbac.authorization.k8s.io/v1", "ClusterRole", &json!({"rules": []})).is_empty());
        assert!(always_owned("rbac.authorization.k8s.io/v1", "Role", &aggregated).is_empty());
        assert!(always_owned("example.com/v1", "ClusterRole", &aggregated).is_empty(), "another group's ClusterRole is not RBAC's");
    }

    #[test]
    fn when_unset_rows_name_their_manager_and_subresource() {
        let d = json!({});
        let replicas = [f("spec"), f("replicas")];
        assert!(fills("apps/v1", "Deployment", &d, "kube-controller-manager", Some("scale"), &replicas));
        assert!(!fills("apps/v1", "Deployment", &d, "kubectl", Some("scale"), &replicas), "a person's scale is drift");
        assert!(!fills("apps/v1", "Deployment", &d, "kube-controller-manager", None, &replicas), "only through the scale subresource");
        assert!(!fills("apps/v1", "DaemonSet", &d, "kube-controller-manager", Some("scale"), &replicas));
        assert!(fills("v1", "ReplicationController", &d, "kube-controller-manager", Some("scale"), &replicas));
        assert!(!fills("apps/v1", "Deployment", &d, "kube-controller-manager", None, &[f("metadata"), f("annotations"), f("note")]));
        let token = [f("data"), f("token")];
        assert!(fills("v1", "Secret", &json!({"type": "kubernetes.io/service-account-token"}), "kube-controller-manager", None, &token));
        assert!(!fills("v1", "Secret", &json!({"type": "Opaque"}), "kube-controller-manager", None, &token));
    }

    #[test]
    fn wildcards_and_prefixes() {
        let path = |s: &str| segments_of_pointer(s);
        assert!(covers("/spec/*/name", &path("/spec/x/name")));
        assert!(covers("/spec/*/name", &path("/spec/x/name/deeper")));
        assert!(!covers("/spec/*/name", &path("/spec/x")));
        assert!(covers("/metadata/annotations/a~1b", &path("/metadata/annotations/a~1b")));
        assert!(!covers("/metadata/annotations/a~1b", &path("/metadata/annotations/a~1c")));
        assert_eq!(segments_of_field_path(&[f("spec"), FieldKey::Index(3), f("n")]), vec!["spec", "*", "n"]);
    }

    #[test]
    fn system_managers() {
        for m in ["kube-controller-manager", "kube-scheduler", "kubelet", "kube-apiserver", "clusterrole-aggregation-controller"] {
            assert!(is_system_manager(m), "{m}");
        }
        for m in ["helm", "kubectl-edit", "kubectl", "argocd-controller"] {
            assert!(!is_system_manager(m), "{m}");
        }
    }
}
