//! What the API's schema says about a field: how a list is merged (by key, as a set, or as a
//! whole) and whether a value is a `Quantity`. Read from the OpenAPI v3 document the API server
//! publishes per group-version (which carries built-in types' list keys and CRDs' structural
//! schemas alike), walked lazily along the path a comparison needs.

use std::sync::Arc;

use serde_json::{Map, Value};

/// How a list is compared and owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// Items matched by these key fields (`x-kubernetes-list-type: map` or a patch merge key).
    Map(Vec<String>),
    /// Scalar items compared as a set.
    Set,
    /// The whole list is one value.
    Atomic,
    /// The schema does not say; compared item by item, by position.
    Unknown,
}

/// One step of a schema path: a field name, or "any item of the list / value of the map".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step<'a> {
    Field(&'a str),
    Item,
}

/// What the comparison asks of a schema.
pub trait Schema: Send + Sync {
    fn list_type(&self, path: &[Step]) -> ListType;
    fn is_quantity(&self, path: &[Step]) -> bool;
}

/// The definition names a schema node's `$ref`s lead to (one step).
fn refs_in(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.rsplit('/').next().unwrap_or(r).to_string());
            }
            m.values().for_each(|v| refs_in(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| refs_in(v, out)),
        _ => {}
    }
}

/// A schema node without its descriptions (text for people; a property named `description`
/// is a schema, an object, and stays).
fn slim(node: &Value) -> Value {
    match node {
        Value::Object(m) => Value::Object(m.iter().filter(|(k, v)| !(k.as_str() == "description" && v.is_string())).map(|(k, v)| (k.clone(), slim(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(slim).collect()),
        other => other.clone(),
    }
}

const QUANTITY_REF: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";

/// A kind's schema from an OpenAPI v3 document (`components.schemas`), rooted at the
/// definition whose `x-kubernetes-group-version-kind` matches.
#[derive(Clone, Debug)]
pub struct OpenApiSchema {
    components: Arc<Map<String, Value>>,
    root: Value,
}

impl OpenApiSchema {
    /// The schema of `group/version, kind` in a group-version's OpenAPI v3 document (for
    /// tests: the API server's documents are read as text, [`Self::for_kind_in_document`]).
    #[cfg(test)]
    pub fn for_kind(document: &Value, group: &str, version: &str, kind: &str) -> Option<Self> {
        Self::for_kind_in_document(&document.to_string(), group, version, kind).ok().flatten()
    }

    /// The same from the document's text as the API server sends it. Keeps only what the kind
    /// reaches (its definition and those its `$ref`s lead to), without descriptions: a
    /// document is megabytes (core v1's 1.4 MB of text, ten times that parsed), a kind's
    /// fragments kilobytes. The definitions stay text until one is reached (issue 18: parsed
    /// whole, the documents were most of the controller's peak heap).
    pub fn for_kind_in_document(document: &str, group: &str, version: &str, kind: &str) -> Result<Option<Self>, serde_json::Error> {
        use serde_json::value::RawValue;
        use std::borrow::Cow;
        #[derive(serde::Deserialize)]
        struct Doc<'a> {
            #[serde(borrow, default)]
            components: Components<'a>,
        }
        #[derive(serde::Deserialize, Default)]
        struct Components<'a> {
            #[serde(borrow, default)]
            schemas: std::collections::HashMap<Cow<'a, str>, &'a RawValue>,
        }
        #[derive(serde::Deserialize)]
        struct Kinds {
            #[serde(rename = "x-kubernetes-group-version-kind", default)]
            kinds: Vec<Gvk>,
        }
        #[derive(serde::Deserialize)]
        struct Gvk {
            #[serde(default)]
            group: String,
            #[serde(default)]
            version: String,
            #[serde(default)]
            kind: String,
        }
        let doc: Doc = serde_json::from_str(document)?;
        let definitions = doc.components.schemas;
        let root = definitions.values().find(|raw| {
            serde_json::from_str::<Kinds>(raw.get()).is_ok_and(|k| k.kinds.iter().any(|g| g.group == group && g.version == version && g.kind == kind))
        });
        let Some(root) = root else { return Ok(None) };
        let root: Value = serde_json::from_str(root.get())?;
        let mut kept = Map::new();
        let mut todo = Vec::new();
        refs_in(&root, &mut todo);
        while let Some(name) = todo.pop() {
            if kept.contains_key(&name) {
                continue;
            }
            let Some(raw) = definitions.get(name.as_str()) else { continue };
            let definition: Value = serde_json::from_str(raw.get())?;
            refs_in(&definition, &mut todo);
            kept.insert(name, slim(&definition));
        }
        Ok(Some(OpenApiSchema { components: Arc::new(kept), root: slim(&root) }))
    }

    /// The definitions this schema keeps (for tests and the heap profile).
    pub fn definitions(&self) -> usize {
        self.components.len()
    }

    /// A schema from a bare JSON schema (a CRD's `openAPIV3Schema`; no `$ref`s).
    pub fn from_json_schema(schema: Value) -> Self {
        OpenApiSchema { components: Arc::new(Map::new()), root: schema }
    }

    /// Resolves `$ref` and single-element `allOf` wrappers.
    fn resolve<'a>(&'a self, mut node: &'a Value) -> &'a Value {
        for _ in 0..16 {
            if let Some(r) = node.get("$ref").and_then(Value::as_str) {
                match self.components.get(r.rsplit('/').next().unwrap_or(r)) {
                    Some(target) => node = target,
                    None => return node,
                }
            } else if let Some([only]) = node.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
                node = only;
            } else {
                return node;
            }
        }
        node
    }

    fn is_ref_to(node: &Value, name: &str) -> bool {
        let direct = node.get("$ref").and_then(Value::as_str).is_some_and(|r| r.ends_with(name));
        let wrapped = node
            .get("allOf")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|n| n.get("$ref").and_then(Value::as_str).is_some_and(|r| r.ends_with(name))));
        direct || wrapped
    }

    /// The raw (unresolved) node at a path, so that `$ref` names stay visible.
    fn node(&self, path: &[Step]) -> Option<&Value> {
        let mut node = &self.root;
        for step in path {
            let resolved = self.resolve(node);
            node = match step {
                Step::Field(name) => resolved
                    .get("properties")
                    .and_then(|p| p.get(*name))
                    .or_else(|| resolved.get("additionalProperties").filter(|a| a.is_object()))?,
                Step::Item => resolved
                    .get("items")
                    .or_else(|| resolved.get("additionalProperties").filter(|a| a.is_object()))?,
            };
        }
        Some(node)
    }
}

impl Schema for OpenApiSchema {
    fn list_type(&self, path: &[Step]) -> ListType {
        let Some(node) = self.node(path) else { return builtin_list_type(path) };
        let node = self.resolve(node);
        let keys = |k: &str| -> Option<Vec<String>> {
            Some(node.get(k)?.as_array()?.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        };
        match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => keys("x-kubernetes-list-map-keys").map_or(ListType::Unknown, ListType::Map),
            Some("set") => ListType::Set,
            Some("atomic") => ListType::Atomic,
            _ => match node.get("x-kubernetes-patch-merge-key").and_then(Value::as_str) {
                Some(k) => ListType::Map(vec![k.to_string()]),
                None => builtin_list_type(path),
            },
        }
    }

    fn is_quantity(&self, path: &[Step]) -> bool {
        match self.node(path) {
            Some(node) => {
                Self::is_ref_to(node, QUANTITY_REF)
                    || self.resolve(node).get("x-kubernetes-int-or-string").is_some_and(|v| v == true)
                        && looks_like_resources(path)
            }
            None => looks_like_resources(path),
        }
    }
}

/// No schema at all: the patch merge keys of the built-in types Helm charts use most, by the
/// field's name and parent, and quantities under the usual resource fields.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuiltinSchema;

impl Schema for BuiltinSchema {
    fn list_type(&self, path: &[Step]) -> ListType {
        builtin_list_type(path)
    }
    fn is_quantity(&self, path: &[Step]) -> bool {
        looks_like_resources(path)
    }
}

/// The field names along a path, list and map items left out.
fn field_names<'a>(path: &[Step<'a>]) -> Vec<&'a str> {
    path.iter()
        .filter_map(|s| match s {
            Step::Field(f) => Some(*f),
            Step::Item => None,
        })
        .collect()
}

fn builtin_list_type(path: &[Step]) -> ListType {
    let names = field_names(path);
    let map = |keys: &[&str]| ListType::Map(keys.iter().map(|k| k.to_string()).collect());
    match names.as_slice() {
        [.., "containers" | "initContainers" | "ephemeralContainers", "ports"] => map(&["containerPort", "protocol"]),
        [.., "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets"] => map(&["name"]),
        [.., "volumeMounts"] => map(&["mountPath"]),
        [.., "volumeDevices"] => map(&["devicePath"]),
        ["spec", "ports"] => map(&["port", "protocol"]),
        [.., "hostAliases"] => map(&["ip"]),
        [.., "finalizers"] => ListType::Set,
        _ => ListType::Unknown,
    }
}

fn looks_like_resources(path: &[Step]) -> bool {
    let names = field_names(path);
    matches!(
        names.as_slice(),
        [.., "limits" | "requests" | "capacity" | "allocatable" | "hard" | "used", _]
            | [.., "emptyDir", "sizeLimit"]
            | [.., "overhead", _]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({"components": {"schemas": {
            "io.k8s.api.apps.v1.Deployment": {
                "x-kubernetes-group-version-kind": [{"group": "apps", "version": "v1", "kind": "Deployment"}],
                "properties": {"spec": {"allOf": [{"$ref": "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"}]}}
            },
            "io.k8s.api.apps.v1.DeploymentSpec": {"properties": {
                "template": {"$ref": "#/components/schemas/io.k8s.api.core.v1.PodTemplateSpec"}}},
            "io.k8s.api.core.v1.PodTemplateSpec": {"properties": {"spec": {"$ref": "#/components/schemas/io.k8s.api.core.v1.PodSpec"}}},
            "io.k8s.api.core.v1.PodSpec": {"properties": {
                "containers": {"type": "array", "items": {"$ref": "#/components/schemas/io.k8s.api.core.v1.Container"},
                               "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
                "tolerations": {"type": "array", "x-kubernetes-list-type": "atomic", "items": {}}}},
            "io.k8s.api.core.v1.Container": {"properties": {
                "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["containerPort", "protocol"], "items": {}},
                "env": {"type": "array", "x-kubernetes-patch-merge-key": "name", "items": {}},
                "resources": {"properties": {"limits": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.api.resource.Quantity"}}}}}},
            "io.k8s.apimachinery.pkg.api.resource.Quantity": {"type": "string"}
        }}})
    }

    #[test]
    fn walks_refs_and_reads_list_types() {
        let s = OpenApiSchema::for_kind(&doc(), "apps", "v1", "Deployment").unwrap();
        use Step::*;
        let pod = [Field("spec"), Field("template"), Field("spec")];
        let at = |rest: &[Step<'static>]| [&pod[..], rest].concat();
        assert_eq!(s.list_type(&at(&[Field("containers")])), ListType::Map(vec!["name".into()]));
        assert_eq!(s.list_type(&at(&[Field("tolerations")])), ListType::Atomic);
        assert_eq!(
            s.list_type(&at(&[Field("containers"), Item, Field("ports")])),
            ListType::Map(vec!["containerPort".into(), "protocol".into()])
        );
        assert_eq!(s.list_type(&at(&[Field("containers"), Item, Field("env")])), ListType::Map(vec!["name".into()]));
        assert!(s.is_quantity(&at(&[Field("containers"), Item, Field("resources"), Field("limits"), Field("memory")])));
        assert!(!s.is_quantity(&at(&[Field("containers"), Item, Field("name")])));
        assert!(OpenApiSchema::for_kind(&doc(), "apps", "v1", "StatefulSet").is_none());
    }

    #[test]
    fn keeps_only_what_the_kind_reaches_without_descriptions() {
        let mut d = doc();
        let schemas = d.pointer_mut("/components/schemas").unwrap().as_object_mut().unwrap();
        schemas.insert("io.k8s.api.core.v1.Unrelated".into(), json!({"properties": {"x": {"type": "string"}}}));
        schemas["io.k8s.api.core.v1.PodSpec"]["description"] = "PodSpec is a description of a pod.".into();
        schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["description"] = json!({"type": "string", "description": "a field named description"});
        let s = OpenApiSchema::for_kind(&d, "apps", "v1", "Deployment").unwrap();
        assert_eq!(s.definitions(), 5, "DeploymentSpec, PodTemplateSpec, PodSpec, Container and Quantity (the root is kept apart)");
        assert!(!s.components.contains_key("io.k8s.api.core.v1.Unrelated"));
        let pod = &s.components["io.k8s.api.core.v1.PodSpec"];
        assert!(pod.get("description").is_none(), "{pod}");
        assert_eq!(pod["properties"]["description"], json!({"type": "string"}), "a property named description stays");
        assert!(s.is_quantity(&[Step::Field("spec"), Step::Field("template"), Step::Field("spec"), Step::Field("containers"), Step::Item, Step::Field("resources"), Step::Field("limits"), Step::Field("cpu")]));
    }

    #[test]
    fn crd_schemas_need_no_refs() {
        let s = OpenApiSchema::from_json_schema(json!({"properties": {"spec": {"properties": {
            "parts": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
            "tags": {"type": "array", "x-kubernetes-list-type": "set"}}}}}));
        assert_eq!(s.list_type(&[Step::Field("spec"), Step::Field("parts")]), ListType::Map(vec!["name".into()]));
        assert_eq!(s.list_type(&[Step::Field("spec"), Step::Field("tags")]), ListType::Set);
    }

    #[test]
    fn builtin_fallback() {
        use Step::*;
        let b = BuiltinSchema;
        assert_eq!(b.list_type(&[Field("spec"), Field("ports")]), ListType::Map(vec!["port".into(), "protocol".into()]));
        assert_eq!(
            b.list_type(&[Field("spec"), Field("containers"), Item, Field("ports")]),
            ListType::Map(vec!["containerPort".into(), "protocol".into()])
        );
        assert_eq!(b.list_type(&[Field("rules")]), ListType::Unknown);
        assert!(b.is_quantity(&[Field("resources"), Field("requests"), Field("cpu")]));
    }
}
