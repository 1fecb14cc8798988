//! Splitting a release manifest into objects the way Helm applies it: documents separated by
//! `---` lines (Kubernetes' YAML stream reader: a line starting with `---` followed by nothing
//! but blanks or a comment), empty documents skipped, `kind: List` flattened, and each
//! document's `# Source:` comment kept as its template path. YAML is read with the YAML 1.1
//! scalar rules Kubernetes' own reader uses (`0644` is octal, `yes` is a boolean), so the
//! desired values are the ones the API server received.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// One object of a release's manifest, as Helm sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredObject {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// `metadata.namespace` as the manifest writes it (resolution against the release
    /// namespace and the kind's scope happens later, with discovery).
    pub namespace: Option<String>,
    /// The template path from the `# Source:` comment.
    pub template: Option<String>,
    /// Position of the document in the manifest (0-based; empty documents are not counted).
    pub index: usize,
    pub object: Value,
}

/// A manifest document that could not be read. The message never quotes the document's
/// values (a Secret's would leak).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("manifest document {index}{}: {message}", template.as_ref().map(|s| format!(" ({s})")).unwrap_or_default())]
pub struct ManifestError {
    pub index: usize,
    /// The template path from the document's `# Source:` comment.
    pub template: Option<String>,
    pub message: String,
}

/// The objects of a manifest and the documents that could not be read; one bad document
/// never hides the others.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SplitManifest {
    pub objects: Vec<DesiredObject>,
    pub errors: Vec<ManifestError>,
}

/// Splits a manifest into its YAML documents (text), as Kubernetes' YAML reader does.
pub fn split_documents(manifest: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    for line in manifest.split_inclusive('\n') {
        if is_separator(line) {
            docs.push(&manifest[start..pos]);
            start = pos + line.len();
        }
        pos += line.len();
    }
    docs.push(&manifest[start..]);
    docs.into_iter().filter(|d| !is_blank_document(d)).collect()
}

fn is_separator(line: &str) -> bool {
    match line.strip_prefix("---") {
        Some(rest) => {
            let rest = rest.trim();
            rest.is_empty() || rest.starts_with('#')
        }
        None => false,
    }
}

/// Only blank lines and comments.
fn is_blank_document(doc: &str) -> bool {
    doc.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    })
}

fn template_of(doc: &str) -> Option<String> {
    doc.lines()
        .find_map(|l| l.trim().strip_prefix("# Source: "))
        .map(|s| s.trim().to_string())
}

/// Parses a manifest into objects. Never panics, whatever the input.
pub fn split_manifest(manifest: &str) -> SplitManifest {
    let mut out = SplitManifest::default();
    for (index, doc) in split_documents(manifest).into_iter().enumerate() {
        let template = template_of(doc);
        let err = |message: String| ManifestError { index, template: template.clone(), message };
        let value = match parse_yaml(doc) {
            Ok(Some(v)) => v,
            Ok(None) => continue, // `null` or only comments: Helm skips it too
            Err(message) => {
                out.errors.push(err(message));
                continue;
            }
        };
        let items = if is_list(&value) {
            match value.get("items") {
                Some(Value::Array(items)) => items.clone(),
                Some(Value::Null) | None => Vec::new(),
                Some(_) => {
                    out.errors.push(err("a List whose items is not a list".into()));
                    continue;
                }
            }
        } else {
            vec![value]
        };
        for object in items {
            match desired_object(object, index, template.clone()) {
                Ok(o) => out.objects.push(o),
                Err(message) => out.errors.push(err(message)),
            }
        }
    }
    out
}

fn is_list(v: &Value) -> bool {
    v.get("kind").and_then(Value::as_str).is_some_and(|k| k == "List" || k.ends_with("List"))
        && v.get("items").is_some()
        && v.get("metadata").and_then(|m| m.get("name")).is_none()
}

fn desired_object(object: Value, index: usize, template: Option<String>) -> Result<DesiredObject, String> {
    let Value::Object(map) = &object else {
        return Err(format!("not a mapping but {}", type_name(&object)));
    };
    let field = |k: &str| map.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    let api_version = field("apiVersion").ok_or("no apiVersion")?;
    let kind = field("kind").ok_or("no kind")?;
    let meta = map.get("metadata").and_then(Value::as_object);
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{kind} has no metadata.name"))?
        .to_string();
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    Ok(DesiredObject { api_version, kind, name, namespace, template, index, object })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn yaml_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.legacy_octal_numbers = true; // YAML 1.1, as Kubernetes reads manifests
    o.with_snippet = false; // error messages must not quote document text
    o
}

/// One YAML document to JSON; `None` for an empty or `null` document. The error message is
/// the parser's, without any quoted text of the document.
pub fn parse_yaml(doc: &str) -> Result<Option<Value>, String> {
    match serde_saphyr::from_str_with_options::<Option<JsonFromYaml>>(doc, yaml_options()) {
        Ok(v) => Ok(v.map(|j| j.0).filter(|v| !v.is_null())),
        Err(e) => Err(format!("not valid YAML: {}", first_line(&e.to_string()))),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// A JSON value read from YAML, where mapping keys that are numbers or booleans become strings,
/// as Kubernetes' YAML-to-JSON conversion does (`8080: ...` in a ConfigMap's data).
struct JsonFromYaml(Value);

impl<'de> Deserialize<'de> for JsonFromYaml {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor).map(JsonFromYaml)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        i64::try_from(v).map(Value::from).or_else(|_| Ok(Value::from(v as f64)))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        u64::try_from(v).map(Value::from).or_else(|_| Ok(Value::from(v as f64)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that JSON cannot hold (inf or nan)"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        // `!!binary`: Kubernetes' reader turns it into its base64 text again.
        use base64::Engine as _;
        Ok(Value::String(base64::engine::general_purpose::STANDARD.encode(v)))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(JsonFromYaml(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(KeyString(k)) = map.next_key()? {
            let JsonFromYaml(v) = map.next_value()?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

struct KeyString(String);

impl<'de> Deserialize<'de> for KeyString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(ValueVisitor)? {
            Value::String(s) => Ok(KeyString(s)),
            Value::Null => Ok(KeyString("null".into())),
            v @ (Value::Bool(_) | Value::Number(_)) => Ok(KeyString(v.to_string())),
            _ => Err(de::Error::custom("a mapping key that is a list or a mapping")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TWO: &str = "---\n# Source: c/templates/cm.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  k: v\n---\n# Source: c/templates/svc.yaml\napiVersion: v1\nkind: Service\nmetadata:\n  name: b\n  namespace: other\nspec:\n  ports:\n  - port: 80\n";

    #[test]
    fn splits_helm_manifests_with_sources() {
        let m = split_manifest(TWO);
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        assert_eq!(m.objects.len(), 2);
        let a = &m.objects[0];
        assert_eq!((a.api_version.as_str(), a.kind.as_str(), a.name.as_str()), ("v1", "ConfigMap", "a"));
        assert_eq!(a.namespace, None);
        assert_eq!(a.template.as_deref(), Some("c/templates/cm.yaml"));
        assert_eq!(a.object["data"]["k"], "v");
        let b = &m.objects[1];
        assert_eq!(b.namespace.as_deref(), Some("other"));
        assert_eq!(b.index, 1);
        assert_eq!(b.object["spec"]["ports"][0]["port"], 80);
    }

    #[test]
    fn separators_like_kubernetes_reader() {
        assert_eq!(split_documents("a: 1\n---\nb: 2\n").len(), 2);
        assert_eq!(split_documents("a: 1\n--- # comment\nb: 2\n").len(), 2);
        assert_eq!(split_documents("a: 1\n---   \nb: 2").len(), 2);
        // Not separators: text after the dashes, or dashes inside a line.
        assert_eq!(split_documents("a: 1\n---b\n").len(), 1);
        assert_eq!(split_documents("a: |\n  x\n  ---\n").len(), 1);
        // Empty and comment-only documents are skipped.
        assert_eq!(split_documents("---\n---\n# only a comment\n---\n\n---\na: 1\n---\n").len(), 1);
        assert!(split_documents("").is_empty());
    }

    #[test]
    fn null_documents_are_skipped() {
        let m = split_manifest("---\nnull\n---\n~\n");
        assert!(m.objects.is_empty() && m.errors.is_empty());
    }

    #[test]
    fn yaml_1_1_scalars_as_kubernetes_reads_them() {
        let v = parse_yaml("mode: 0644\nhex: 0x1F\nflag: yes\nenabled: off\noff: 1\nquoted: \"0644\"\nfloat: 1.50\nbig: 18446744073709551615\n")
            .unwrap()
            .unwrap();
        assert_eq!(v["mode"], 420);
        assert_eq!(v["hex"], 31);
        assert_eq!(v["flag"], true);
        assert_eq!(v["enabled"], false);
        // A YAML 1.1 boolean key becomes "false", as Kubernetes' YAML-to-JSON does.
        assert_eq!(v["false"], 1);
        assert_eq!(v["quoted"], "0644");
        assert_eq!(v["float"], 1.5);
        assert_eq!(v["big"], json!(18446744073709551615u64));
    }

    #[test]
    fn non_string_keys_become_strings() {
        let v = parse_yaml("data:\n  8080: default/web:80\n  true: x\n").unwrap().unwrap();
        assert_eq!(v["data"]["8080"], "default/web:80");
        assert_eq!(v["data"]["true"], "x");
    }

    #[test]
    fn block_scalars_and_anchors() {
        let v = parse_yaml("a: &x\n  k: v\nb: *x\ns: |\n  line1\n  line2\nf: >-\n  folded\n  text\n").unwrap().unwrap();
        assert_eq!(v["b"]["k"], "v");
        assert_eq!(v["s"], "line1\nline2\n");
        assert_eq!(v["f"], "folded text");
    }

    #[test]
    fn lists_are_flattened() {
        let m = split_manifest(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: a}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: b}\n",
        );
        assert_eq!(m.objects.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        // Both come from document 0.
        assert!(m.objects.iter().all(|o| o.index == 0));
    }

    #[test]
    fn a_bad_document_does_not_hide_the_others() {
        let text = "---\n# Source: c/templates/bad.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n---\n# Source: c/templates/good.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: good\n";
        let m = split_manifest(text);
        assert_eq!(m.objects.len(), 1);
        assert_eq!(m.objects[0].name, "good");
        assert_eq!(m.errors.len(), 1);
        assert_eq!(m.errors[0].index, 0);
        assert_eq!(m.errors[0].template.as_deref(), Some("c/templates/bad.yaml"));
        assert!(m.errors[0].to_string().starts_with("manifest document 0 (c/templates/bad.yaml): not valid YAML"), "{}", m.errors[0]);
    }

    #[test]
    fn objects_without_identity_are_errors() {
        let cases = [
            ("just a string", "not a mapping but a string"),
            ("- a\n- b", "not a mapping but a list"),
            ("kind: ConfigMap\nmetadata: {name: a}", "no apiVersion"),
            ("apiVersion: v1\nmetadata: {name: a}", "no kind"),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata: {generateName: a-}", "ConfigMap has no metadata.name"),
        ];
        for (doc, want) in cases {
            let m = split_manifest(doc);
            assert_eq!(m.errors.len(), 1, "{doc}");
            assert_eq!(m.errors[0].message, want, "{doc}");
        }
    }

    #[test]
    fn errors_do_not_quote_secret_values() {
        let doc = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\nstringData:\n  password: hunter2\n  password: hunter3\n";
        let m = split_manifest(doc);
        for e in &m.errors {
            assert!(!e.to_string().contains("hunter"), "{e}");
        }
    }
}
