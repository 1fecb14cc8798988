//! Table tests of the engine: each normalisation, each list kind, each attribution shape.

use serde_json::{Value, json};

use super::*;

fn deploy(container: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
           "spec": {"replicas": 2, "template": {"spec": {"containers": [container]}}}})
}

fn diff(desired: &Value, live: &Value) -> Vec<(String, ChangeKind)> {
    diff_with(desired, live, &[], &[])
}

fn diff_with(desired: &Value, live: &Value, paths: &[&str], managers: &[String]) -> Vec<(String, ChangeKind)> {
    let ObjectDiff { state, fields, .. } = diff_object(desired, live, &BuiltinSchema, DiffOptions { paths, managers, ..Default::default() });
    assert_eq!(state == ObjectState::InSync, fields.is_empty());
    fields.into_iter().map(|f| (f.path, f.change)).collect()
}

fn insync(desired: Value, live: Value) {
    let d = diff(&desired, &live);
    assert!(d.is_empty(), "expected in sync:\n desired {desired}\n live {live}\n got {d:?}");
}

fn drifted(desired: Value, live: Value, want: &[(&str, ChangeKind)]) {
    let d = diff(&desired, &live);
    let want: Vec<(String, ChangeKind)> = want.iter().map(|(p, c)| (p.to_string(), *c)).collect();
    assert_eq!(d, want, "\n desired {desired}\n live {live}");
}

use ChangeKind::*;

#[test]
fn quantities_equal_in_meaning_are_in_sync() {
    let pairs = [
        ("1000m", json!("1")),
        ("1", json!(1)),
        ("1Gi", json!("1073741824")),
        ("1024Mi", json!("1Gi")),
        ("0.5", json!("500m")),
        ("100m", json!("0.1")),
        ("1k", json!("1000")),
        ("1e3", json!("1k")),
        ("2048Ki", json!("2Mi")),
        ("1.5Gi", json!("1536Mi")),
        ("250m", json!("250m")),
        ("0", json!("0")),
    ];
    for (d, l) in pairs {
        insync(
            deploy(json!({"name": "c", "resources": {"limits": {"cpu": d}}})),
            deploy(json!({"name": "c", "resources": {"limits": {"cpu": l}}})),
        );
        insync(
            deploy(json!({"name": "c", "resources": {"requests": {"memory": d}}})),
            deploy(json!({"name": "c", "resources": {"requests": {"memory": l}}})),
        );
    }
}

#[test]
fn different_quantities_are_modified() {
    let pairs = [("512Mi", "1Gi"), ("1", "2"), ("100m", "200m"), ("1G", "1Gi"), ("1", "1001m")];
    for (d, l) in pairs {
        drifted(
            deploy(json!({"name": "c", "resources": {"limits": {"memory": d}}})),
            deploy(json!({"name": "c", "resources": {"limits": {"memory": l}}})),
            &[("/spec/template/spec/containers/0/resources/limits/memory", Modified)],
        );
    }
}

#[test]
fn quantity_rules_apply_only_to_quantities() {
    drifted(
        json!({"kind": "ConfigMap", "data": {"size": "1Gi"}}),
        json!({"kind": "ConfigMap", "data": {"size": "1073741824"}}),
        &[("/data/size", Modified)],
    );
}

#[test]
fn numbers_equal_in_value() {
    for (d, l) in [(json!(1), json!(1.0)), (json!(0.5), json!(0.5)), (json!(-3), json!(-3.0)), (json!(10), json!(10))] {
        insync(json!({"spec": {"n": d}}), json!({"spec": {"n": l}}));
    }
    for (d, l) in [(json!(1), json!(2)), (json!(1), json!("1")), (json!(true), json!("true")), (json!(0.5), json!(0.25))] {
        drifted(json!({"spec": {"n": d}}), json!({"spec": {"n": l}}), &[("/spec/n", Modified)]);
    }
}

#[test]
fn zero_values_absent_live_are_in_sync() {
    for z in [json!(null), json!(false), json!(0), json!(""), json!([]), json!({}), json!({"x": {}})] {
        insync(json!({"spec": {"a": 1, "z": z}}), json!({"spec": {"a": 1}}));
    }
}

#[test]
fn set_values_absent_live_are_removed() {
    for v in [json!(true), json!(3), json!("x"), json!([1]), json!({"k": "v"})] {
        drifted(json!({"spec": {"a": 1, "v": v}}), json!({"spec": {"a": 1}}), &[("/spec/v", Removed)]);
    }
}

#[test]
fn server_defaults_and_status_are_not_drift() {
    insync(
        deploy(json!({"name": "c", "image": "x"})),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "uid": "u", "resourceVersion": "9", "generation": 3,
                            "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"extra": "x"}},
               "spec": {"replicas": 2, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
                        "strategy": {"type": "RollingUpdate"},
                        "template": {"spec": {"containers": [{"name": "c", "image": "x", "imagePullPolicy": "Always",
                            "terminationMessagePath": "/dev/termination-log"}], "restartPolicy": "Always", "dnsPolicy": "ClusterFirst"}}},
               "status": {"replicas": 0}}),
    );
}

#[test]
fn manifest_status_and_server_metadata_are_ignored() {
    insync(
        json!({"kind": "ConfigMap", "metadata": {"name": "a", "creationTimestamp": null, "uid": "x"}, "status": {"x": 1}, "data": {"k": "v"}}),
        json!({"kind": "ConfigMap", "metadata": {"name": "a", "creationTimestamp": "t", "uid": "y"}, "data": {"k": "v"}}),
    );
}

#[test]
fn helm_stamps_on_live_are_not_drift() {
    insync(
        json!({"kind": "ConfigMap", "metadata": {"name": "a", "labels": {"app": "x"}}}),
        json!({"kind": "ConfigMap", "metadata": {"name": "a",
            "labels": {"app": "x", "app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": "r", "meta.helm.sh/release-namespace": "n"},
            "managedFields": [{"manager": "helm", "operation": "Update", "fieldsV1": {"f:metadata": {"f:labels": {"f:app.kubernetes.io/managed-by": {}}, "f:annotations": {"f:meta.helm.sh/release-name": {}, "f:meta.helm.sh/release-namespace": {}}}}}]}}),
    );
}

#[test]
fn labels_and_annotations() {
    let cm = |labels: Value| json!({"kind": "ConfigMap", "metadata": {"name": "a", "labels": labels}});
    insync(cm(json!({"a": "1"})), cm(json!({"a": "1", "b": "2"})));
    drifted(cm(json!({"a": "1"})), cm(json!({"a": "2"})), &[("/metadata/labels/a", Modified)]);
    drifted(cm(json!({"a": "1", "c": "3"})), cm(json!({"a": "1"})), &[("/metadata/labels/c", Removed)]);
    drifted(
        json!({"kind": "X", "metadata": {"name": "a", "annotations": {"a/b": "1"}}}),
        json!({"kind": "X", "metadata": {"name": "a", "annotations": {"a/b": "2"}}}),
        &[("/metadata/annotations/a~1b", Modified)],
    );
}

#[test]
fn secret_string_data_equals_data() {
    let live = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": "Opaque",
        "data": {"user": "YWRtaW4=", "pass": "aHVudGVyMg=="}});
    insync(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": "Opaque",
        "stringData": {"user": "admin", "pass": "hunter2"}}), live.clone());
    insync(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
        "data": {"user": "YWRtaW4="}, "stringData": {"pass": "hunter2"}}), live.clone());
    drifted(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"pass": "other"}}),
        live,
        &[("/data/pass", Modified)],
    );
}

#[test]
fn secret_values_are_redacted() {
    let fields = diff_object(
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"pass": "hunter2"}}),
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"pass": "aHVudGVyMw=="}}),
        &BuiltinSchema, DiffOptions::default()).fields;
    let shown = serde_json::to_string(&fields).unwrap();
    assert!(!shown.contains("aHVudGVy") && !shown.contains("hunter"), "{shown}");
    assert!(fields[0].desired.as_ref().unwrap().as_str().unwrap().starts_with("(redacted, hmac:"));
    assert_ne!(fields[0].desired, fields[0].live, "different values keep different digests");
    // One key, one digest per value; another key, another digest.
    let a = DigestKey::from_bytes(b"cluster-a");
    let b = DigestKey::from_bytes(b"cluster-b");
    let shown = |key: &DigestKey| {
        diff_object(
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"pass": "hunter2", "copy": "hunter2"}}),
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"pass": "eA==", "copy": "eQ=="}}),
            &BuiltinSchema,
            DiffOptions { digest_key: Some(key), ..Default::default() },
        )
        .fields
    };
    let (fa, fb) = (shown(&a), shown(&b));
    assert_eq!(fa[0].desired, fa[1].desired, "equal values, equal digests within one report");
    assert_ne!(fa[0].desired, fb[0].desired, "another key, another digest");
}

#[test]
fn map_lists_match_by_key_not_index() {
    let d = deploy(json!({"name": "c", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}));
    insync(d.clone(), deploy(json!({"name": "c", "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]})));
    insync(d.clone(), deploy(json!({"name": "c", "env": [{"name": "A", "value": "1"}, {"name": "X", "value": "x"}, {"name": "B", "value": "2"}]})));
    drifted(
        d.clone(),
        deploy(json!({"name": "c", "env": [{"name": "B", "value": "3"}, {"name": "A", "value": "1"}]})),
        &[("/spec/template/spec/containers/0/env/1/value", Modified)],
    );
    drifted(d, deploy(json!({"name": "c", "env": [{"name": "A", "value": "1"}]})), &[("/spec/template/spec/containers/0/env/1", Removed)]);
}

#[test]
fn containers_match_by_name() {
    let two = |a: &str, b: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"}, "spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": a}, {"name": "sidecar", "image": b}]}}}})
    };
    let swapped = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"}, "spec": {"template": {"spec": {"containers": [
        {"name": "sidecar", "image": "s:1"}, {"name": "web", "image": "w:1"}]}}}});
    insync(two("w:1", "s:1"), swapped.clone());
    drifted(two("w:2", "s:1"), swapped, &[("/spec/template/spec/containers/0/image", Modified)]);
}

#[test]
fn container_ports_default_protocol_tcp() {
    insync(
        deploy(json!({"name": "c", "ports": [{"containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}]})),
        deploy(json!({"name": "c", "ports": [{"containerPort": 53, "protocol": "UDP"}, {"containerPort": 8080, "protocol": "TCP"}]})),
    );
    drifted(
        deploy(json!({"name": "c", "ports": [{"containerPort": 53, "protocol": "UDP"}]})),
        deploy(json!({"name": "c", "ports": [{"containerPort": 53, "protocol": "TCP"}]})),
        &[("/spec/template/spec/containers/0/ports/0", Removed)],
    );
}

#[test]
fn service_ports_match_by_port() {
    let svc = |ports: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": ports}});
    insync(
        svc(json!([{"name": "http", "port": 80, "targetPort": "http"}])),
        svc(json!([{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "nodePort": 31000}])),
    );
    drifted(
        svc(json!([{"port": 80, "targetPort": 8080}])),
        svc(json!([{"port": 80, "targetPort": 9090, "protocol": "TCP"}])),
        &[("/spec/ports/0/targetPort", Modified)],
    );
    drifted(svc(json!([{"port": 80, "targetPort": "8080"}])), svc(json!([{"port": 80, "targetPort": 8080, "protocol": "TCP"}])), &[("/spec/ports/0/targetPort", Modified)]);
}

#[test]
fn volumes_and_mounts() {
    let d = deploy(json!({"name": "c", "volumeMounts": [{"name": "cfg", "mountPath": "/etc/x", "readOnly": true}]}));
    insync(d.clone(), deploy(json!({"name": "c", "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "cfg", "mountPath": "/etc/x", "readOnly": true}]})));
    drifted(d.clone(), deploy(json!({"name": "c", "volumeMounts": [{"name": "cfg", "mountPath": "/etc/x"}]})), &[("/spec/template/spec/containers/0/volumeMounts/0/readOnly", Removed)]);
    drifted(d, deploy(json!({"name": "c", "volumeMounts": [{"name": "cfg", "mountPath": "/etc/y", "readOnly": true}]})), &[("/spec/template/spec/containers/0/volumeMounts/0", Removed)]);
    // readOnly: false is dropped by the API server.
    insync(
        deploy(json!({"name": "c", "volumeMounts": [{"name": "cfg", "mountPath": "/m", "readOnly": false}]})),
        deploy(json!({"name": "c", "volumeMounts": [{"name": "cfg", "mountPath": "/m"}]})),
    );
}

#[test]
fn unknown_lists_compare_by_position() {
    insync(json!({"spec": {"args": ["a", "b"]}}), json!({"spec": {"args": ["a", "b"]}}));
    drifted(json!({"spec": {"args": ["a", "b"]}}), json!({"spec": {"args": ["b", "a"]}}), &[("/spec/args/0", Modified), ("/spec/args/1", Modified)]);
    drifted(json!({"spec": {"args": ["a"]}}), json!({"spec": {"args": ["a", "b"]}}), &[("/spec/args", Modified)]);
    drifted(json!({"spec": {"args": ["a", "b"]}}), json!({"spec": {"args": []}}), &[("/spec/args", Modified)]);
    // Items of such lists are compared as subsets: server defaults inside them are fine.
    insync(json!({"spec": {"rules": [{"host": "a"}]}}), json!({"spec": {"rules": [{"host": "a", "http": {"paths": []}}]}}));
}

fn schema_with(list_type: &str, keys: &[&str]) -> OpenApiSchema {
    OpenApiSchema::from_json_schema(json!({"properties": {"spec": {"properties": {"items": {
        "type": "array", "x-kubernetes-list-type": list_type, "x-kubernetes-list-map-keys": keys}}}}}))
}

fn diff_schema(schema: &OpenApiSchema, d: Value, l: Value) -> Vec<(String, ChangeKind)> {
    diff_object(&d, &l, schema, DiffOptions::default()).fields.into_iter().map(|f| (f.path, f.change)).collect()
}

#[test]
fn crd_list_types_from_the_schema() {
    let map = schema_with("map", &["name"]);
    assert!(diff_schema(&map, json!({"spec": {"items": [{"name": "a", "n": 1}, {"name": "b", "n": 2}]}}),
        json!({"spec": {"items": [{"name": "b", "n": 2}, {"name": "a", "n": 1}]}})).is_empty());
    assert_eq!(
        diff_schema(&map, json!({"spec": {"items": [{"name": "a", "n": 1}]}}), json!({"spec": {"items": [{"name": "a", "n": 5}]}})),
        vec![("/spec/items/0/n".to_string(), Modified)]
    );
    let set = schema_with("set", &[]);
    assert!(diff_schema(&set, json!({"spec": {"items": ["x", "y"]}}), json!({"spec": {"items": ["y", "x", "z"]}})).is_empty());
    assert_eq!(diff_schema(&set, json!({"spec": {"items": ["x", "q"]}}), json!({"spec": {"items": ["x"]}})), vec![("/spec/items/1".to_string(), Removed)]);
    let atomic = schema_with("atomic", &[]);
    assert_eq!(
        diff_schema(&atomic, json!({"spec": {"items": ["x"]}}), json!({"spec": {"items": ["x", "y"]}})),
        vec![("/spec/items".to_string(), Modified)]
    );
}

fn with_managers(mut live: Value, managers: Value) -> Value {
    live["metadata"]["managedFields"] = managers;
    live
}

#[test]
fn attribution_of_a_modified_field() {
    let d = deploy(json!({"name": "c", "resources": {"limits": {"memory": "512Mi"}}}));
    let live = with_managers(
        deploy(json!({"name": "c", "resources": {"limits": {"memory": "1Gi"}}})),
        json!([{"manager": "helm", "operation": "Update", "time": "2026-01-01T00:00:00Z",
                "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:name": {}, "f:resources": {"f:limits": {"f:memory": {}}}}}}}}}},
               {"manager": "kubectl-edit", "operation": "Update", "time": "2026-02-01T00:00:00Z",
                "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {"f:resources": {"f:limits": {"f:memory": {}}}}}}}}}}]),
    );
    let ObjectDiff { state, fields, .. } = diff_object(&d, &live, &BuiltinSchema, DiffOptions::default());
    assert_eq!(state, ObjectState::Modified);
    assert_eq!(fields.len(), 1);
    let f = &fields[0];
    assert_eq!(f.path, "/spec/template/spec/containers/0/resources/limits/memory");
    assert_eq!((f.desired.clone(), f.live.clone()), (Some(json!("512Mi")), Some(json!("1Gi"))));
    assert_eq!(f.manager.as_deref(), Some("kubectl-edit"));
    assert_eq!(f.operation.as_deref(), Some("Update"));
    assert_eq!(f.time.as_deref(), Some("2026-02-01T00:00:00Z"));
}

#[test]
fn attribution_of_a_scale() {
    let live = with_managers(
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 5}}),
        json!([{"manager": "kubectl", "operation": "Update", "subresource": "scale", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]),
    );
    let fields = diff_object(&json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2}}), &live, &BuiltinSchema, DiffOptions::default()).fields;
    assert_eq!(fields[0].manager.as_deref(), Some("kubectl"));
    assert_eq!(fields[0].path, "/spec/replicas");
}

#[test]
fn added_env_var_and_annotation_by_a_foreign_manager() {
    let d = deploy(json!({"name": "c", "env": [{"name": "A", "value": "1"}]}));
    let mut live = deploy(json!({"name": "c", "env": [{"name": "A", "value": "1"}, {"name": "DEBUG", "value": "true"}]}));
    live["metadata"]["annotations"] = json!({"note": "x", "deployment.kubernetes.io/revision": "2"});
    let live = with_managers(live, json!([
        {"manager": "kubectl-patch", "operation": "Update", "time": "2026-03-01T00:00:00Z", "fieldsV1": {
            "f:metadata": {"f:annotations": {".": {}, "f:note": {}}},
            "f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {"f:env": {"k:{\"name\":\"DEBUG\"}": {".": {}, "f:name": {}, "f:value": {}}}}}}}}}},
        {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
         "fieldsV1": {"f:metadata": {"f:annotations": {"f:deployment.kubernetes.io/revision": {}}}}}
    ]));
    let ObjectDiff { state, fields, .. } = diff_object(&d, &live, &BuiltinSchema, DiffOptions::default());
    assert_eq!(state, ObjectState::Added);
    let got: Vec<(String, Option<String>)> = fields.iter().map(|f| (f.path.clone(), f.manager.clone())).collect();
    assert_eq!(
        got,
        vec![
            ("/metadata/annotations/note".to_string(), Some("kubectl-patch".to_string())),
            ("/spec/template/spec/containers/0/env/1".to_string(), Some("kubectl-patch".to_string())),
        ]
    );
    assert_eq!(fields[1].live, Some(json!({"name": "DEBUG", "value": "true"})));
}

#[test]
fn added_annotation_when_the_manifest_has_annotations() {
    let d = json!({"kind": "ConfigMap", "metadata": {"name": "a", "annotations": {"keep": "1"}}});
    let live = with_managers(
        json!({"kind": "ConfigMap", "metadata": {"name": "a", "annotations": {"keep": "1", "note": "x"}}}),
        json!([{"manager": "kubectl-annotate", "operation": "Update", "fieldsV1": {"f:metadata": {"f:annotations": {"f:note": {}}}}}]),
    );
    let fields = diff_object(&d, &live, &BuiltinSchema, DiffOptions::default()).fields;
    assert_eq!(fields.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), vec!["/metadata/annotations/note"]);
    assert_eq!(fields[0].change, Added);
}

#[test]
fn added_by_helm_or_through_status_is_not_drift() {
    for (manager, subresource) in [("helm", None), ("before-first-apply", None), ("kube-controller-manager", Some("status"))] {
        let mut entry = json!({"manager": manager, "operation": "Update", "fieldsV1": {"f:metadata": {"f:annotations": {"f:extra": {}}}, "f:data": {"f:extra": {}}}});
        if let Some(s) = subresource {
            entry["subresource"] = json!(s);
        }
        let live = with_managers(json!({"kind": "ConfigMap", "metadata": {"name": "a", "annotations": {"extra": "x"}}, "data": {"k": "v", "extra": "x"}}), json!([entry]));
        insync(json!({"kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}}), live);
    }
}

#[test]
fn system_components_are_excused_only_where_the_table_says() {
    // kube-controller-manager writing a ConfigMap's data is in no row of the table: reported,
    // and named.
    let live = with_managers(
        json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "a"}, "data": {"k": "v", "extra": "x"}}),
        json!([{"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:data": {"f:extra": {}}}}]),
    );
    let fields = diff_object(&json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "a"}, "data": {"k": "v"}}), &live, &BuiltinSchema, DiffOptions::default()).fields;
    assert_eq!(fields.iter().map(|f| (f.path.as_str(), f.manager.as_deref())).collect::<Vec<_>>(), vec![("/data/extra", Some("kube-controller-manager"))]);
    // An HPA's replicas on a chart that leaves them out: the autoscaler's, not drift. A person
    // scaling the same Deployment is drift, said to be through the scale subresource.
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"paused": false}});
    let scaled_by = |manager: &str| {
        with_managers(
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 7}}),
            json!([{"manager": manager, "operation": "Update", "subresource": "scale", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]),
        )
    };
    insync(d.clone(), scaled_by("kube-controller-manager"));
    let fields = diff_object(&d, &scaled_by("kubectl"), &BuiltinSchema, DiffOptions::default()).fields;
    assert_eq!(fields.len(), 1);
    assert_eq!((fields[0].path.as_str(), fields[0].change, fields[0].manager.as_deref(), fields[0].subresource.as_deref()), ("/spec/replicas", Added, Some("kubectl"), Some("scale")));
}

fn cluster_role(extra: Value) -> Value {
    let mut v = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "agg"}});
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    v
}

#[test]
fn aggregated_cluster_role_rules_are_the_controllers() {
    let rule = json!({"aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"rbac.example.com/aggregate-to-agg": "true"}}]}});
    let filled = || {
        let mut live = cluster_role(rule.clone());
        live["rules"] = json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]);
        live["metadata"]["managedFields"] = json!([
            {"manager": "helm", "operation": "Update", "fieldsV1": {"f:aggregationRule": {".": {}, "f:clusterRoleSelectors": {}}}},
            {"manager": "clusterrole-aggregation-controller", "operation": "Apply", "fieldsV1": {"f:rules": {}}}]);
        live
    };
    // Manifest without rules: the filled rules are not Added.
    insync(cluster_role(rule.clone()), filled());
    // Manifest with `rules: []`: not Modified either.
    let mut with_empty = cluster_role(rule.clone());
    with_empty["rules"] = json!([]);
    insync(with_empty.clone(), filled());
    // Nothing aggregated yet: the API server returns `rules: null`.
    let mut unfilled = cluster_role(rule.clone());
    unfilled["rules"] = Value::Null;
    insync(with_empty, unfilled);
    // Without an aggregationRule the rules are the chart's: a change is drift.
    let mut plain = cluster_role(json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}));
    let desired = plain.clone();
    plain["rules"][0]["verbs"] = json!(["get", "delete"]);
    assert!(!diff(&desired, &plain).is_empty());
}

#[test]
fn empty_equals_absent_and_null() {
    // A ClusterRole whose manifest says `rules: []`; the API server answers `rules: null` or
    // leaves it out.
    insync(cluster_role(json!({"rules": []})), cluster_role(json!({"rules": null})));
    insync(cluster_role(json!({"rules": []})), cluster_role(json!({})));
    insync(json!({"spec": {"m": {}}}), json!({"spec": {"m": null}}));
    drifted(json!({"spec": {"l": [1]}}), json!({"spec": {"l": null}}), &[("/spec/l", Removed)]);
}

#[test]
fn a_removed_field_names_no_manager_only_candidates() {
    // `kubectl patch --type json` removed the port; `kubectl label` wrote the object later.
    let d = deploy(json!({"name": "c", "ports": [{"containerPort": 8080}, {"containerPort": 9090}]}));
    let mut live = deploy(json!({"name": "c", "ports": [{"containerPort": 9090, "protocol": "TCP"}]}));
    live["metadata"]["labels"] = json!({"x": "1"});
    let live = with_managers(live, json!([
        {"manager": "helm", "operation": "Update", "time": "2026-01-01T00:00:00Z", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
        {"manager": "kubectl-patch", "operation": "Update", "time": "2026-01-02T00:00:00Z", "fieldsV1": {"f:spec": {"f:paused": {}}}},
        {"manager": "kubectl-label", "operation": "Update", "time": "2026-01-02T00:00:02Z", "fieldsV1": {"f:metadata": {"f:labels": {"f:x": {}}}}},
        {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "time": "2026-01-02T00:00:03Z", "fieldsV1": {"f:status": {}}}
    ]));
    let deployed: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let opts = DiffOptions { deployed_at: Some(deployed), ..Default::default() };
    let fields = diff_object(&d, &live, &BuiltinSchema, opts).fields;
    let port = fields.iter().find(|f| f.path == "/spec/template/spec/containers/0/ports/0").expect("the removed port");
    assert_eq!(port.change, Removed);
    assert_eq!((port.manager.as_deref(), port.operation.as_deref(), port.time.as_deref()), (None, None, None), "no guess");
    assert_eq!(port.candidates, vec!["kubectl-label", "kubectl-patch"], "newest first, labelled candidates");
    let json = serde_json::to_value(port).unwrap();
    assert!(json.get("manager").is_none(), "{json}");
    // Without the deploy time there are no candidates either.
    assert!(diff_object(&d, &live, &BuiltinSchema, DiffOptions::default()).fields.iter().all(|f| f.candidates.is_empty()));
    // The label is owned: its writer is named, with no candidates.
    let label = fields.iter().find(|f| f.path == "/metadata/labels/x").expect("the added label");
    assert_eq!((label.manager.as_deref(), label.candidates.len()), (Some("kubectl-label"), 0));
}

#[test]
fn operational_annotations_are_actions_not_drift() {
    let d = deploy(json!({"name": "c", "image": "x"}));
    let mut live = deploy(json!({"name": "c", "image": "x"}));
    live["spec"]["template"]["metadata"] = json!({"annotations": {"kubectl.kubernetes.io/restartedAt": "2026-05-01T10:00:00Z"}});
    live["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/last-applied-configuration": "{\"kind\":\"Deployment\",\"secret\":\"s3cr3t\"}"});
    let live = with_managers(live, json!([
        {"manager": "kubectl-rollout", "operation": "Update", "time": "2026-05-01T10:00:01Z", "fieldsV1": {"f:spec": {"f:template": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/restartedAt": {}}}}}}},
        {"manager": "kubectl-client-side-apply", "operation": "Update", "time": "2026-05-02T00:00:00Z", "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}}}}}
    ]));
    let got = diff_object(&d, &live, &BuiltinSchema, DiffOptions::default());
    assert_eq!(got.state, ObjectState::InSync, "{:?}", got.fields);
    let ops: Vec<(&str, Option<&str>, Option<&str>)> = got.operations.iter().map(|o| (o.action.as_str(), o.manager.as_deref(), o.time.as_deref())).collect();
    assert_eq!(
        ops,
        vec![("Restarted", Some("kubectl-rollout"), Some("2026-05-01T10:00:00Z")), ("ClientSideApplied", Some("kubectl-client-side-apply"), Some("2026-05-02T00:00:00Z"))]
    );
    // The policy switch: both count, and the applied configuration's text is never shown.
    let counted = diff_object(&d, &live, &BuiltinSchema, DiffOptions { operations_as_drift: true, ..Default::default() });
    assert_eq!(counted.state, ObjectState::Added);
    assert!(counted.operations.is_empty());
    assert_eq!(counted.fields.len(), 2);
    assert!(!serde_json::to_string(&counted.fields).unwrap().contains("s3cr3t"));
    // A chart that sets the annotation itself compares it like any other value.
    let mut own = d.clone();
    own["spec"]["template"]["metadata"] = json!({"annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"}});
    assert_eq!(diff(&own, &live), vec![("/spec/template/metadata/annotations/kubectl.kubernetes.io~1restartedAt".to_string(), Modified)]);
}

#[test]
fn ignore_paths_hide_exactly_their_subtree() {
    let d = deploy(json!({"name": "c", "image": "a"}));
    let l = {
        let mut l = deploy(json!({"name": "c", "image": "b"}));
        l["spec"]["replicas"] = json!(5);
        l
    };
    assert_eq!(diff_with(&d, &l, &["/spec/replicas"], &[]), vec![("/spec/template/spec/containers/0/image".to_string(), Modified)]);
    assert!(diff_with(&d, &l, &["/spec"], &[]).is_empty());
    assert_eq!(diff_with(&d, &l, &["/spec/replica"], &[]).len(), 2);
}

#[test]
fn ignore_managers_hide_their_changes() {
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"}, "spec": {"replicas": 2, "paused": true}});
    let live = with_managers(
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"}, "spec": {"replicas": 7, "paused": false}}),
        json!([{"manager": "hpa-like", "operation": "Update", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
               {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {"f:spec": {"f:paused": {}}}}]),
    );
    assert_eq!(diff_with(&d, &live, &[], &["hpa-like".to_string()]), vec![("/spec/paused".to_string(), Modified)]);
}

#[test]
fn type_changes_are_modified() {
    for (d, l) in [
        (json!({"a": 1}), json!([1])),
        (json!([1]), json!({"a": 1})),
        (json!("x"), json!({"a": 1})),
        (json!({"a": 1}), json!("x")),
    ] {
        drifted(json!({"spec": {"v": d}}), json!({"spec": {"v": l}}), &[("/spec/v", Modified)]);
    }
}

#[test]
fn pointer_escaping() {
    drifted(
        json!({"data": {"a/b": "1", "c~d": "2"}}),
        json!({"data": {"a/b": "9", "c~d": "8"}}),
        &[("/data/a~1b", Modified), ("/data/c~0d", Modified)],
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-z0-9]{0,8}".prop_map(Value::from),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        scalar().prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// What an API server does to an object: adds defaults next to what was set, adds
    /// status and server metadata, and drops fields set to their zero value.
    fn server_default(v: &Value, extra: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut out = serde_json::Map::new();
                for (k, v) in m {
                    if !normalize::is_zero(v) {
                        out.insert(k.clone(), server_default(v, extra));
                    }
                }
                out.insert("zzDefaulted".into(), extra.clone());
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(|i| server_default(i, extra)).collect()),
            other => other.clone(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn an_object_is_in_sync_with_itself(spec in value()) {
            let obj = json!({"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": spec});
            let ObjectDiff { state, fields, .. } = diff_object(&obj, &obj, &BuiltinSchema, DiffOptions::default());
            prop_assert_eq!(state, ObjectState::InSync, "{:?}", fields);
        }

        #[test]
        fn server_defaulting_is_never_drift(spec in value(), extra in scalar()) {
            let obj = json!({"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": spec});
            let mut live = server_default(&obj, &extra);
            live["status"] = json!({"observedGeneration": 1});
            live["metadata"]["uid"] = json!("u-1");
            let ObjectDiff { state, fields, .. } = diff_object(&obj, &live, &BuiltinSchema, DiffOptions::default());
            prop_assert_eq!(state, ObjectState::InSync, "{:?}", fields);
        }

        #[test]
        fn changing_a_set_scalar_is_drift(spec in prop::collection::btree_map("[a-z]{1,6}", any::<i32>(), 1..6), bump in 1i32..1000) {
            let obj = json!({"kind": "Thing", "metadata": {"name": "t"}, "spec": spec});
            let (key, v) = spec.iter().next().unwrap();
            let mut live = obj.clone();
            live["spec"][key] = json!(v.wrapping_add(bump));
            let ObjectDiff { state, fields, .. } = diff_object(&obj, &live, &BuiltinSchema, DiffOptions::default());
            prop_assert_eq!(state, ObjectState::Modified);
            prop_assert_eq!(fields.len(), 1);
            prop_assert_eq!(&fields[0].path, &format!("/spec/{}", key));
        }

        /// Whatever managers wrote the object (each owning some of the fields still there, at
        /// any time), a field removed live names none of them: Kubernetes keeps no owner for it.
        #[test]
        fn a_removed_field_never_names_a_manager(
            spec in prop::collection::btree_map("[a-z]{1,6}", 1i32..1000, 2..8),
            writers in prop::collection::vec(("[a-z-]{1,10}", 0u32..60, any::<bool>()), 0..5),
        ) {
            let obj = json!({"kind": "Thing", "metadata": {"name": "t"}, "spec": spec});
            let removed = spec.keys().next().unwrap().clone();
            let mut live = obj.clone();
            live["spec"].as_object_mut().unwrap().remove(&removed);
            let kept: Vec<&String> = spec.keys().skip(1).collect();
            let entries: Vec<Value> = writers.iter().enumerate().map(|(i, (m, minute, owns))| {
                // `{}` is an owned leaf: a writer that owns nothing in spec wrote a label.
                let owned = if *owns { json!({"f:spec": {format!("f:{}", kept[i % kept.len()]): {}}}) } else { json!({"f:metadata": {"f:labels": {"f:x": {}}}}) };
                json!({"manager": m, "operation": "Update", "time": format!("2026-01-01T00:{minute:02}:00Z"), "fieldsV1": owned})
            }).collect();
            live["metadata"]["managedFields"] = Value::Array(entries);
            let deployed: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
            let fields = diff_object(&obj, &live, &BuiltinSchema, DiffOptions { deployed_at: Some(deployed), ..Default::default() }).fields;
            let gone = fields.iter().find(|f| f.path == format!("/spec/{removed}"));
            prop_assert!(gone.is_some(), "{:?}", fields);
            let gone = gone.unwrap();
            prop_assert_eq!(gone.change, Removed);
            prop_assert_eq!(&gone.manager, &None);
            prop_assert_eq!(&gone.time, &None);
            for c in &gone.candidates {
                prop_assert!(writers.iter().any(|(m, _, _)| m == c), "a candidate is a writer of the object: {}", c);
            }
        }
    }
}

/// A compact table: (what, desired, live, expected changes). Each row one case.
#[test]
fn more_cases() {
    let rows: Vec<(&str, Value, Value, Vec<(&str, ChangeKind)>)> = vec![
        ("nested empty map absent live", json!({"spec": {"a": {"b": {}}}}), json!({"spec": {}}), vec![]),
        ("nested empty list absent live", json!({"spec": {"a": {"b": []}}}), json!({"spec": {"a": {}}}), vec![]),
        ("empty map vs live empty map", json!({"spec": {"a": {}}}), json!({"spec": {"a": {}}}), vec![]),
        ("empty list vs live list", json!({"spec": {"a": []}}), json!({"spec": {"a": [1]}}), vec![("/spec/a", Modified)]),
        ("string value changed", json!({"data": {"k": "a"}}), json!({"data": {"k": "b"}}), vec![("/data/k", Modified)]),
        ("string emptied live", json!({"data": {"k": "a"}}), json!({"data": {"k": ""}}), vec![("/data/k", Modified)]),
        ("bool flipped", json!({"spec": {"paused": true}}), json!({"spec": {"paused": false}}), vec![("/spec/paused", Modified)]),
        ("false vs absent", json!({"spec": {"paused": false}}), json!({"spec": {}}), vec![]),
        ("zero vs absent", json!({"spec": {"minReadySeconds": 0}}), json!({"spec": {}}), vec![]),
        ("null desired", json!({"spec": {"x": null}}), json!({"spec": {"x": 5}}), vec![]),
        ("int-or-string port name", json!({"spec": {"ports": [{"port": 80, "targetPort": "http"}]}}), json!({"spec": {"ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}]}}), vec![]),
        ("int-or-string number vs name", json!({"spec": {"ports": [{"port": 80, "targetPort": 80}]}}), json!({"spec": {"ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}]}}), vec![("/spec/ports/0/targetPort", Modified)]),
        ("service port removed", json!({"spec": {"ports": [{"port": 80}, {"port": 443}]}}), json!({"spec": {"ports": [{"port": 80, "protocol": "TCP"}]}}), vec![("/spec/ports/1", Removed)]),
        ("service port udp vs tcp", json!({"spec": {"ports": [{"port": 53, "protocol": "UDP"}]}}), json!({"spec": {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}}), vec![]),
        ("probe defaults", deploy(json!({"name": "c", "livenessProbe": {"httpGet": {"path": "/h", "port": 8080}}})),
            deploy(json!({"name": "c", "livenessProbe": {"httpGet": {"path": "/h", "port": 8080, "scheme": "HTTP"}, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}})), vec![]),
        ("probe path changed", deploy(json!({"name": "c", "livenessProbe": {"httpGet": {"path": "/h"}}})), deploy(json!({"name": "c", "livenessProbe": {"httpGet": {"path": "/x"}}})),
            vec![("/spec/template/spec/containers/0/livenessProbe/httpGet/path", Modified)]),
        ("probe removed", deploy(json!({"name": "c", "livenessProbe": {"httpGet": {"path": "/h"}}})), deploy(json!({"name": "c"})),
            vec![("/spec/template/spec/containers/0/livenessProbe", Removed)]),
        ("container removed", deploy(json!({"name": "c"})), json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "other"}]}}}}),
            vec![("/spec/template/spec/containers/0", Removed)]),
        ("image changed", deploy(json!({"name": "c", "image": "a:1"})), deploy(json!({"name": "c", "image": "a:2"})), vec![("/spec/template/spec/containers/0/image", Modified)]),
        ("args changed", deploy(json!({"name": "c", "args": ["--a"]})), deploy(json!({"name": "c", "args": ["--b"]})), vec![("/spec/template/spec/containers/0/args/0", Modified)]),
        ("command grown", deploy(json!({"name": "c", "command": ["x"]})), deploy(json!({"name": "c", "command": ["x", "y"]})), vec![("/spec/template/spec/containers/0/command", Modified)]),
        ("env valueFrom", deploy(json!({"name": "c", "env": [{"name": "P", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]})),
            deploy(json!({"name": "c", "env": [{"name": "P", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}]})), vec![]),
        ("env value changed", deploy(json!({"name": "c", "env": [{"name": "P", "value": "1"}]})), deploy(json!({"name": "c", "env": [{"name": "P", "value": "2"}]})),
            vec![("/spec/template/spec/containers/0/env/0/value", Modified)]),
        ("env var removed", deploy(json!({"name": "c", "env": [{"name": "P", "value": "1"}]})), deploy(json!({"name": "c", "env": []})),
            vec![("/spec/template/spec/containers/0/env/0", Removed)]),
        ("volume by name", json!({"spec": {"template": {"spec": {"volumes": [{"name": "a", "emptyDir": {}}, {"name": "b", "configMap": {"name": "x"}}]}}}}),
            json!({"spec": {"template": {"spec": {"volumes": [{"name": "b", "configMap": {"name": "x", "defaultMode": 420}}, {"name": "a", "emptyDir": {}}]}}}}), vec![]),
        ("volume source changed", json!({"spec": {"template": {"spec": {"volumes": [{"name": "b", "configMap": {"name": "x"}}]}}}}),
            json!({"spec": {"template": {"spec": {"volumes": [{"name": "b", "configMap": {"name": "y"}}]}}}}), vec![("/spec/template/spec/volumes/0/configMap/name", Modified)]),
        ("defaultMode octal as decimal", json!({"spec": {"template": {"spec": {"volumes": [{"name": "b", "secret": {"secretName": "s", "defaultMode": 420}}]}}}}),
            json!({"spec": {"template": {"spec": {"volumes": [{"name": "b", "secret": {"secretName": "s", "defaultMode": 420}}]}}}}), vec![]),
        ("imagePullSecrets by name", json!({"spec": {"template": {"spec": {"imagePullSecrets": [{"name": "a"}, {"name": "b"}]}}}}),
            json!({"spec": {"template": {"spec": {"imagePullSecrets": [{"name": "b"}, {"name": "a"}]}}}}), vec![]),
        ("initContainers by name", json!({"spec": {"template": {"spec": {"initContainers": [{"name": "i", "image": "x"}]}}}}),
            json!({"spec": {"template": {"spec": {"initContainers": [{"name": "i", "image": "y"}]}}}}), vec![("/spec/template/spec/initContainers/0/image", Modified)]),
        ("selector matchLabels", json!({"spec": {"selector": {"matchLabels": {"a": "1"}}}}), json!({"spec": {"selector": {"matchLabels": {"a": "1"}}}}), vec![]),
        ("annotation value changed", json!({"metadata": {"name": "a", "annotations": {"x": "1"}}}), json!({"metadata": {"name": "a", "annotations": {"x": "2"}}}), vec![("/metadata/annotations/x", Modified)]),
        ("annotation removed", json!({"metadata": {"name": "a", "annotations": {"x": "1"}}}), json!({"metadata": {"name": "a"}}), vec![("/metadata/annotations", Removed)]),
        ("rbac rules atomic by position", json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
            json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}), vec![("/rules/0/verbs", Modified)]),
        ("rbac subjects", json!({"subjects": [{"kind": "ServiceAccount", "name": "a", "namespace": "n"}]}),
            json!({"subjects": [{"kind": "ServiceAccount", "name": "a", "namespace": "n"}]}), vec![]),
        ("ingress rules", json!({"spec": {"rules": [{"host": "a.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix"}]}}]}}),
            json!({"spec": {"rules": [{"host": "b.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix"}]}}]}}), vec![("/spec/rules/0/host", Modified)]),
        ("pdb int-or-percent", json!({"spec": {"minAvailable": "50%"}}), json!({"spec": {"minAvailable": "50%"}}), vec![]),
        ("pdb changed to number", json!({"spec": {"minAvailable": "50%"}}), json!({"spec": {"minAvailable": 1}}), vec![("/spec/minAvailable", Modified)]),
        ("storage quantity in claim templates", json!({"spec": {"volumeClaimTemplates": [{"spec": {"resources": {"requests": {"storage": "1Gi"}}}}]}}),
            json!({"spec": {"volumeClaimTemplates": [{"spec": {"resources": {"requests": {"storage": "1024Mi"}}, "volumeMode": "Filesystem"}, "status": {"phase": "Pending"}}]}}), vec![]),
        ("emptyDir sizeLimit quantity", json!({"spec": {"volumes": [{"name": "v", "emptyDir": {"sizeLimit": "256Mi"}}]}}),
            json!({"spec": {"volumes": [{"name": "v", "emptyDir": {"sizeLimit": "268435456"}}]}}), vec![]),
        ("hpa metrics", json!({"spec": {"metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]}}),
            json!({"spec": {"metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 90}}}]}}),
            vec![("/spec/metrics/0/resource/target/averageUtilization", Modified)]),
        ("cronjob schedule", json!({"spec": {"schedule": "0 3 1 1 *"}}), json!({"spec": {"schedule": "*/5 * * * *"}}), vec![("/spec/schedule", Modified)]),
        ("finalizers as a set", json!({"metadata": {"name": "a", "finalizers": ["a", "b"]}}), json!({"metadata": {"name": "a", "finalizers": ["b", "a", "c"]}}), vec![]),
        ("finalizer removed", json!({"metadata": {"name": "a", "finalizers": ["a", "b"]}}), json!({"metadata": {"name": "a", "finalizers": ["a"]}}), vec![("/metadata/finalizers/1", Removed)]),
        ("unicode values", json!({"data": {"greeting": "héllo ✓"}}), json!({"data": {"greeting": "héllo ✓"}}), vec![]),
        ("large integers", json!({"spec": {"n": 9007199254740993u64}}), json!({"spec": {"n": 9007199254740993u64}}), vec![]),
        ("float vs int", json!({"spec": {"ratio": 0.5}}), json!({"spec": {"ratio": 0.5}}), vec![]),
    ];
    let count = rows.len();
    for (what, desired, live, want) in rows {
        let got = diff(&desired, &live);
        let want: Vec<(String, ChangeKind)> = want.iter().map(|(p, c)| (p.to_string(), *c)).collect();
        assert_eq!(got, want, "case {what:?}");
    }
    assert!(count >= 45);
}

#[test]
fn attribution_shapes() {
    // k: with two keys (container ports), v: set items, i: index ownership, Apply vs Update.
    let cases: Vec<(&str, Value, Value, Value, &str, &str)> = vec![
        ("list-map with two keys",
         deploy(json!({"name": "c", "ports": [{"containerPort": 8080, "name": "http"}]})),
         deploy(json!({"name": "c", "ports": [{"containerPort": 8080, "protocol": "TCP", "name": "web"}]})),
         json!([{"manager": "ops", "operation": "Update", "time": "2026-05-01T00:00:00Z", "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {"f:ports": {"k:{\"containerPort\":8080,\"protocol\":\"TCP\"}": {"f:name": {}}}}}}}}}}]),
         "/spec/template/spec/containers/0/ports/0/name", "ops"),
        ("atomic list owned whole",
         json!({"spec": {"args": ["a", "b"]}}),
         json!({"spec": {"args": ["a", "c"]}}),
         json!([{"manager": "tuner", "operation": "Apply", "time": "2026-05-02T00:00:00Z", "fieldsV1": {"f:spec": {"f:args": {}}}}]),
         "/spec/args/1", "tuner"),
        ("index ownership",
         json!({"spec": {"args": ["a", "b"]}}),
         json!({"spec": {"args": ["a", "z"]}}),
         json!([{"manager": "indexer", "operation": "Update", "fieldsV1": {"f:spec": {"f:args": {"i:1": {}}}}}]),
         "/spec/args/1", "indexer"),
        ("newest of two foreign owners",
         json!({"data": {"k": "a"}}),
         json!({"data": {"k": "b"}}),
         json!([{"manager": "old", "operation": "Apply", "time": "2026-01-01T00:00:00Z", "fieldsV1": {"f:data": {"f:k": {}}}},
                {"manager": "new", "operation": "Apply", "time": "2026-06-01T00:00:00Z", "fieldsV1": {"f:data": {"f:k": {}}}}]),
         "/data/k", "new"),
        ("foreign owner before helm",
         json!({"data": {"k": "a"}}),
         json!({"data": {"k": "b"}}),
         json!([{"manager": "helm", "operation": "Apply", "time": "2026-09-01T00:00:00Z", "fieldsV1": {"f:data": {"f:k": {}}}},
                {"manager": "hotfix", "operation": "Apply", "time": "2026-06-01T00:00:00Z", "fieldsV1": {"f:data": {"f:k": {}}}}]),
         "/data/k", "hotfix"),
    ];
    for (what, desired, live, managers, path, manager) in cases {
        let fields = diff_object(&desired, &with_managers(live, managers), &BuiltinSchema, DiffOptions::default()).fields;
        let f = fields.iter().find(|f| f.path == path).unwrap_or_else(|| panic!("{what}: no {path} in {fields:?}"));
        assert_eq!(f.manager.as_deref(), Some(manager), "{what}");
    }
}

#[test]
fn added_set_item_by_a_foreign_manager() {
    let d = json!({"metadata": {"name": "a", "finalizers": ["a"]}});
    let live = with_managers(
        json!({"metadata": {"name": "a", "finalizers": ["a", "example.com/hold"]}}),
        json!([{"manager": "holder", "operation": "Update", "fieldsV1": {"f:metadata": {"f:finalizers": {"v:\"example.com/hold\"": {}}}}}]),
    );
    let ObjectDiff { state, fields, .. } = diff_object(&d, &live, &BuiltinSchema, DiffOptions::default());
    assert_eq!(state, ObjectState::Added);
    assert_eq!(fields[0].path, "/metadata/finalizers/1");
    assert_eq!(fields[0].manager.as_deref(), Some("holder"));
}
