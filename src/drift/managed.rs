//! Who owns a field: Kubernetes' `managedFields` (`fieldsV1` sets, with `f:` field names,
//! `k:{…}` list-map keys, `v:` set values and `i:` indices) turned into per-manager tries that
//! answer "which manager set this path" and "what did foreign managers add".

use serde::Serialize;
use serde_json::{Map, Value};

/// One step of a field path, as `fieldsV1` writes it.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldKey {
    /// `f:name`: a field of a struct or map.
    Field(String),
    /// `k:{"name":"web"}`: the item of a list-map with these key values.
    Key(Map<String, Value>),
    /// `v:"value"`: the item of a set.
    Value(Value),
    /// `i:3`: the item at an index (lists without keys).
    Index(usize),
}

impl FieldKey {
    fn parse(s: &str) -> Option<FieldKey> {
        let (prefix, rest) = s.split_at_checked(2)?;
        match prefix {
            "f:" => Some(FieldKey::Field(rest.to_string())),
            "k:" => serde_json::from_str(rest).ok().map(FieldKey::Key),
            "v:" => serde_json::from_str(rest).ok().map(FieldKey::Value),
            "i:" => rest.parse().ok().map(FieldKey::Index),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Node {
    /// The path itself is owned (`"."` marker, or a leaf `{}`).
    owned: bool,
    children: Vec<(FieldKey, Node)>,
}

impl Node {
    fn from_fields_v1(v: &Value) -> Node {
        let Some(map) = v.as_object() else { return Node { owned: true, children: vec![] } };
        let mut node = Node { owned: map.is_empty(), children: Vec::new() };
        for (k, child) in map {
            if k == "." {
                node.owned = true;
            } else if let Some(key) = FieldKey::parse(k) {
                node.children.push((key, Node::from_fields_v1(child)));
            }
        }
        node
    }

    fn child(&self, key: &FieldKey) -> Option<&Node> {
        self.children.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }

    /// Owned exactly, or through an owned leaf ancestor (an atomic value owned whole).
    fn owns(&self, path: &[FieldKey]) -> bool {
        match path.split_first() {
            None => self.owned,
            Some((first, rest)) => match self.child(first) {
                Some(n) => n.owns(rest),
                None => self.owned && self.children.is_empty(),
            },
        }
    }

    /// Owned leaves, and owned list items; not the maps and structs that merely hold owned
    /// fields (their `"."` says they exist, and the fields inside say more).
    fn owned_paths(&self, prefix: &mut Vec<FieldKey>, out: &mut Vec<Vec<FieldKey>>) {
        let is_item = matches!(prefix.last(), Some(FieldKey::Key(_) | FieldKey::Value(_) | FieldKey::Index(_)));
        if self.owned && !prefix.is_empty() && (self.children.is_empty() || is_item) {
            out.push(prefix.clone());
        }
        for (k, n) in &self.children {
            prefix.push(k.clone());
            n.owned_paths(prefix, out);
            prefix.pop();
        }
    }
}

/// Who changed a field, as Kubernetes recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attribution {
    pub manager: String,
    pub operation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ManagerEntry {
    pub manager: String,
    pub operation: String,
    pub subresource: Option<String>,
    pub time: Option<String>,
    fields: Node,
}

impl ManagerEntry {
    pub fn attribution(&self) -> Attribution {
        Attribution {
            manager: self.manager.clone(),
            operation: self.operation.clone(),
            subresource: self.subresource.clone(),
            time: self.time.clone(),
        }
    }
}

/// Managers that write the desired state itself: Helm, and `before-first-apply`, which holds
/// what the object's creator (Helm) set before the first server-side apply.
pub const HELM_MANAGERS: &[&str] = &["helm", "before-first-apply"];

/// The field managers of one live object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ManagedFields {
    pub entries: Vec<ManagerEntry>,
}

impl ManagedFields {
    /// From a live object's `metadata.managedFields`; malformed entries are skipped.
    pub fn from_object(live: &Value) -> Self {
        let entries = live
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|e| {
                Some(ManagerEntry {
                    manager: e.get("manager")?.as_str()?.to_string(),
                    operation: e.get("operation").and_then(Value::as_str).unwrap_or("").to_string(),
                    subresource: e.get("subresource").and_then(Value::as_str).map(str::to_string),
                    time: e.get("time").and_then(Value::as_str).map(str::to_string),
                    fields: Node::from_fields_v1(e.get("fieldsV1")?),
                })
            })
            .collect();
        ManagedFields { entries }
    }

    pub fn is_helm(manager: &str) -> bool {
        HELM_MANAGERS.contains(&manager)
    }

    /// The manager that owns `path`: among its owners a non-Helm one before Helm, the most
    /// recent first. None when Kubernetes records no owner (a removed field): the object's
    /// latest writer is not who removed it, so nobody is named.
    pub fn attribute(&self, path: &[FieldKey]) -> Option<Attribution> {
        let owners = || self.entries.iter().filter(|e| e.fields.owns(path));
        owners()
            .filter(|e| !Self::is_helm(&e.manager))
            .max_by(|a, b| a.time.cmp(&b.time))
            .or_else(|| owners().max_by(|a, b| a.time.cmp(&b.time)))
            .map(ManagerEntry::attribution)
    }

    /// For a change with no recorded owner: the managers (not Helm, not `excluded`) whose
    /// entries were written since `since`, newest first, status writers left out. With no
    /// `since`, none: without the deploy time nobody can be a candidate.
    pub fn candidates(&self, since: Option<jiff::Timestamp>, excluded: impl Fn(&str) -> bool) -> Vec<String> {
        let Some(since) = since else { return Vec::new() };
        let mut written: Vec<(jiff::Timestamp, &str)> = self
            .entries
            .iter()
            .filter(|e| !Self::is_helm(&e.manager) && !excluded(&e.manager))
            .filter(|e| e.subresource.as_deref() != Some("status"))
            .filter_map(|e| Some((e.time.as_deref()?.parse::<jiff::Timestamp>().ok()?, e.manager.as_str())))
            .filter(|(t, _)| *t >= since)
            .collect();
        written.sort_by_key(|w| std::cmp::Reverse(w.0));
        let mut out: Vec<String> = Vec::new();
        for (_, m) in written {
            if !out.iter().any(|o| o == m) {
                out.push(m.to_string());
            }
        }
        out
    }

    /// Every path owned by a manager that is not Helm, not writing status and not in
    /// `ignored`: the candidates for `Added` fields (Kubernetes' own components included; the
    /// caller excuses what [`super::system`] lists).
    pub fn foreign_paths(&self, ignored: &[String]) -> Vec<(Vec<FieldKey>, &ManagerEntry)> {
        let mut out = Vec::new();
        for e in &self.entries {
            if Self::is_helm(&e.manager) || ignored.contains(&e.manager) || e.subresource.as_deref() == Some("status") {
                continue;
            }
            let mut paths = Vec::new();
            e.fields.owned_paths(&mut Vec::new(), &mut paths);
            out.extend(paths.into_iter().map(|p| (p, e)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(s: &str) -> FieldKey {
        FieldKey::Field(s.into())
    }
    fn k(v: Value) -> FieldKey {
        FieldKey::Key(v.as_object().unwrap().clone())
    }

    fn live() -> Value {
        json!({"metadata": {"managedFields": [
            {"manager": "helm", "operation": "Update", "time": "2026-01-01T00:00:00Z", "fieldsV1": {
                "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                    ".": {}, "f:image": {}, "f:resources": {"f:limits": {".": {}, "f:memory": {}}},
                    "f:env": {".": {}, "k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:value": {}}}}}}},
                    "f:selector": {}}}},
            {"manager": "kubectl-edit", "operation": "Update", "time": "2026-01-03T00:00:00Z", "fieldsV1": {
                "f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {"f:resources": {"f:limits": {"f:memory": {}}}}}}}}}},
            {"manager": "kubectl", "operation": "Update", "subresource": "scale", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
            {"manager": "kubectl-patch", "operation": "Update", "time": "2026-01-04T00:00:00Z", "fieldsV1": {
                "f:metadata": {"f:annotations": {"f:note": {}}},
                "f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {"f:env": {"k:{\"name\":\"DEBUG\"}": {".": {}, "f:name": {}, "f:value": {}}}}}}}}}},
            {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "time": "2026-01-05T00:00:00Z",
             "fieldsV1": {"f:metadata": {"f:annotations": {"f:deployment.kubernetes.io/revision": {}}}, "f:status": {"f:replicas": {}}}},
            {"manager": "broken"}
        ]}})
    }

    #[test]
    fn parses_keys() {
        assert_eq!(FieldKey::parse("f:spec"), Some(f("spec")));
        assert_eq!(FieldKey::parse("k:{\"name\":\"web\"}"), Some(k(json!({"name": "web"}))));
        assert_eq!(FieldKey::parse("v:\"x\""), Some(FieldKey::Value(json!("x"))));
        assert_eq!(FieldKey::parse("i:2"), Some(FieldKey::Index(2)));
        assert_eq!(FieldKey::parse("q:1"), None);
        assert_eq!(FieldKey::parse("k:{bad"), None);
    }

    #[test]
    fn attributes_to_the_foreign_owner() {
        let m = ManagedFields::from_object(&live());
        assert_eq!(m.entries.len(), 5, "the entry without fieldsV1 is skipped");
        let mem = [f("spec"), f("template"), f("spec"), f("containers"), k(json!({"name": "web"})), f("resources"), f("limits"), f("memory")];
        let a = m.attribute(&mem).unwrap();
        assert_eq!((a.manager.as_str(), a.operation.as_str()), ("kubectl-edit", "Update"));
        assert_eq!(a.time.as_deref(), Some("2026-01-03T00:00:00Z"));
        let replicas = m.attribute(&[f("spec"), f("replicas")]).unwrap();
        assert_eq!(replicas.manager, "kubectl");
        assert_eq!(replicas.time, None);
        let image = [f("spec"), f("template"), f("spec"), f("containers"), k(json!({"name": "web"})), f("image")];
        assert_eq!(m.attribute(&image).unwrap().manager, "helm");
    }

    #[test]
    fn atomic_ancestors_own_their_insides() {
        let m = ManagedFields::from_object(&live());
        let inside = [f("spec"), f("selector"), f("matchLabels"), f("app")];
        assert_eq!(m.attribute(&inside).unwrap().manager, "helm");
    }

    #[test]
    fn removed_fields_have_no_owner_only_candidates() {
        let m = ManagedFields::from_object(&live());
        let gone = [f("spec"), f("template"), f("spec"), f("containers"), k(json!({"name": "web"})), f("livenessProbe")];
        assert_eq!(m.attribute(&gone), None, "nobody owns a removed field: no guess");
        let since = |t: &str| Some(t.parse::<jiff::Timestamp>().unwrap());
        // Written since the deploy, newest first; not Helm, not a status writer
        // (kube-controller-manager here), not the scale entry (no time).
        let none = |_: &str| false;
        assert_eq!(m.candidates(since("2026-01-02T00:00:00Z"), none), vec!["kubectl-patch", "kubectl-edit"]);
        assert_eq!(m.candidates(since("2026-01-03T12:00:00Z"), none), vec!["kubectl-patch"]);
        assert_eq!(m.candidates(since("2026-01-03T12:00:00Z"), |m| m == "kubectl-patch"), Vec::<String>::new());
        assert_eq!(m.candidates(None, none), Vec::<String>::new());
    }

    #[test]
    fn scale_attribution_says_the_subresource() {
        let m = ManagedFields::from_object(&live());
        let a = m.attribute(&[f("spec"), f("replicas")]).unwrap();
        assert_eq!((a.manager.as_str(), a.subresource.as_deref(), a.time), ("kubectl", Some("scale"), None));
    }

    #[test]
    fn foreign_paths_skip_helm_status_and_ignored() {
        let m = ManagedFields::from_object(&live());
        let paths: Vec<String> = m.foreign_paths(&[]).iter().map(|(p, e)| format!("{}:{}", e.manager, p.len())).collect();
        assert!(paths.iter().all(|p| !p.starts_with("helm") && !p.starts_with("kube-controller-manager")), "{paths:?}: its entry writes status");
        assert!(paths.contains(&"kubectl-patch:3".to_string()), "the note annotation: {paths:?}");
        let without_patch = m.foreign_paths(&["kubectl-patch".to_string()]);
        assert!(without_patch.iter().all(|(_, e)| e.manager != "kubectl-patch"));
    }
}
