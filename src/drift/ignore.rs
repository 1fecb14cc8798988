//! Ignore rules, in the shape of Flux's `driftDetection.ignore`: JSON pointers, optionally
//! limited to a target (group, version, kind, name, namespace as anchored regexes; label and
//! annotation selectors). A change at or under an ignored pointer is not drift.

use std::collections::BTreeMap;

use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IgnoreRule {
    /// RFC 6901 JSON pointers into the object (e.g. `/spec/replicas`).
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<IgnoreTarget>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IgnoreTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotation_selector: Option<String>,
}

/// The identity of an object, as ignore targets match it.
#[derive(Clone, Debug, Default)]
pub struct ObjectIdentity<'a> {
    pub group: &'a str,
    pub version: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Why a rule is invalid; the message names the rule and the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("ignore rule {index}: {message}")]
pub struct InvalidRule {
    pub index: usize,
    pub message: String,
}

#[derive(Clone, Debug)]
struct CompiledTarget {
    group: Option<Regex>,
    version: Option<Regex>,
    kind: Option<Regex>,
    name: Option<Regex>,
    namespace: Option<Regex>,
    labels: Option<Selector>,
    annotations: Option<Selector>,
}

#[derive(Clone, Debug)]
struct CompiledRule {
    paths: Vec<String>,
    target: Option<CompiledTarget>,
}

/// Ignore rules, validated and compiled once.
#[derive(Clone, Debug, Default)]
pub struct IgnoreRules {
    rules: Vec<CompiledRule>,
}

impl IgnoreRules {
    pub fn compile(rules: &[IgnoreRule]) -> Result<Self, InvalidRule> {
        let mut out = Vec::new();
        for (index, r) in rules.iter().enumerate() {
            let bad = |message: String| InvalidRule { index, message };
            if r.paths.is_empty() {
                return Err(bad("paths is empty".into()));
            }
            for p in &r.paths {
                if !p.is_empty() && !p.starts_with('/') {
                    return Err(bad(format!("path {p:?} is not a JSON pointer (it must start with '/')")));
                }
                if has_bad_escape(p) {
                    return Err(bad(format!("path {p:?} has a '~' that is not ~0 or ~1")));
                }
            }
            let re = |field: &str, v: &Option<String>| -> Result<Option<Regex>, InvalidRule> {
                v.as_ref()
                    .map(|s| Regex::new(&format!("^(?:{s})$")).map_err(|e| bad(format!("target.{field} {s:?} is not a valid regex: {e}"))))
                    .transpose()
            };
            let sel = |field: &str, v: &Option<String>| -> Result<Option<Selector>, InvalidRule> {
                v.as_ref()
                    .map(|s| Selector::parse(s).map_err(|e| bad(format!("target.{field} {s:?}: {e}"))))
                    .transpose()
            };
            let target = match &r.target {
                None => None,
                Some(t) => Some(CompiledTarget {
                    group: re("group", &t.group)?,
                    version: re("version", &t.version)?,
                    kind: re("kind", &t.kind)?,
                    name: re("name", &t.name)?,
                    namespace: re("namespace", &t.namespace)?,
                    labels: sel("labelSelector", &t.label_selector)?,
                    annotations: sel("annotationSelector", &t.annotation_selector)?,
                }),
            };
            out.push(CompiledRule { paths: r.paths.clone(), target });
        }
        Ok(IgnoreRules { rules: out })
    }

    /// The pointers ignored for this object.
    pub fn paths_for(&self, id: &ObjectIdentity) -> Vec<&str> {
        self.rules
            .iter()
            .filter(|r| r.target.as_ref().is_none_or(|t| t.matches(id)))
            .flat_map(|r| r.paths.iter().map(String::as_str))
            .collect()
    }
}

/// `pointer` is `ignored` or lies under it.
pub fn pointer_is_under(pointer: &str, ignored: &str) -> bool {
    ignored.is_empty() || pointer == ignored || pointer.strip_prefix(ignored).is_some_and(|rest| rest.starts_with('/'))
}

fn has_bad_escape(p: &str) -> bool {
    let b = p.as_bytes();
    b.iter().enumerate().any(|(i, &c)| c == b'~' && !matches!(b.get(i + 1), Some(b'0' | b'1')))
}

impl CompiledTarget {
    fn matches(&self, id: &ObjectIdentity) -> bool {
        let m = |re: &Option<Regex>, v: &str| re.as_ref().is_none_or(|r| r.is_match(v));
        m(&self.group, id.group)
            && m(&self.version, id.version)
            && m(&self.kind, id.kind)
            && m(&self.name, id.name)
            && m(&self.namespace, id.namespace)
            && self.labels.as_ref().is_none_or(|s| s.matches(&id.labels))
            && self.annotations.as_ref().is_none_or(|s| s.matches(&id.annotations))
    }
}

/// A Kubernetes label selector: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Selector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let inner = rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or(format!("{part:?}: expected (a,b)"))?;
                Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
            };
            let req = if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set(rest)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), set(rest)?)
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &req {
                Requirement::Eq(k, _) | Requirement::NotEq(k, _) | Requirement::Exists(k) | Requirement::NotExists(k) | Requirement::In(k, _) | Requirement::NotIn(k, _) => k,
            };
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(format!("{part:?} is not a selector requirement"));
            }
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => labels.get(k) == Some(v),
            Requirement::NotEq(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        })
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<'a>(kind: &'a str, name: &'a str) -> ObjectIdentity<'a> {
        ObjectIdentity {
            group: "apps",
            version: "v1",
            kind,
            name,
            namespace: "prod",
            labels: BTreeMap::from([("team".into(), "core".into()), ("tier".into(), "web".into())]),
            annotations: BTreeMap::new(),
        }
    }

    fn rule(paths: &[&str], target: Option<IgnoreTarget>) -> IgnoreRule {
        IgnoreRule { paths: paths.iter().map(|s| s.to_string()).collect(), target }
    }

    #[test]
    fn targets_match_by_anchored_regex() {
        let rules = IgnoreRules::compile(&[
            rule(&["/spec/replicas"], Some(IgnoreTarget { kind: Some("Deployment".into()), ..Default::default() })),
            rule(&["/metadata/annotations"], Some(IgnoreTarget { name: Some("web-.*".into()), ..Default::default() })),
            rule(&["/data"], None),
        ])
        .unwrap();
        assert_eq!(rules.paths_for(&id("Deployment", "api")), vec!["/spec/replicas", "/data"]);
        assert_eq!(rules.paths_for(&id("DeploymentX", "web-1")), vec!["/metadata/annotations", "/data"]);
        assert_eq!(rules.paths_for(&id("StatefulSet", "xweb-1")), vec!["/data"]);
    }

    #[test]
    fn selectors() {
        let l = BTreeMap::from([("team".to_string(), "core".to_string()), ("tier".to_string(), "web".to_string())]);
        for (s, want) in [
            ("team=core", true),
            ("team==core", true),
            ("team!=core", false),
            ("team", true),
            ("!team", false),
            ("!owner", true),
            ("tier in (web, db)", true),
            ("tier notin (web)", false),
            ("team=core,tier=db", false),
            ("", true),
        ] {
            assert_eq!(Selector::parse(s).unwrap().matches(&l), want, "{s}");
        }
        assert!(Selector::parse("tier in web").is_err());
        assert!(Selector::parse("a b").is_err());
    }

    #[test]
    fn invalid_rules_are_refused_with_the_reason() {
        let bad = |r: IgnoreRule| IgnoreRules::compile(&[r]).err().unwrap().to_string();
        assert_eq!(bad(rule(&[], None)), "ignore rule 0: paths is empty");
        assert!(bad(rule(&["spec/replicas"], None)).contains("not a JSON pointer"));
        assert!(bad(rule(&["/a~2b"], None)).contains("'~'"));
        assert!(bad(rule(&["/x"], Some(IgnoreTarget { kind: Some("Deploy(".into()), ..Default::default() }))).contains("target.kind"));
        assert!(bad(rule(&["/x"], Some(IgnoreTarget { label_selector: Some("a in b".into()), ..Default::default() }))).contains("labelSelector"));
    }

    #[test]
    fn pointers_under() {
        assert!(pointer_is_under("/spec/replicas", "/spec/replicas"));
        assert!(pointer_is_under("/spec/template/spec", "/spec"));
        assert!(!pointer_is_under("/spec/replicasX", "/spec/replicas"));
        assert!(pointer_is_under("/anything", ""));
    }
}
