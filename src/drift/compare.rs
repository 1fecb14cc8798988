//! The comparison itself: every field the manifest sets must have the same value live
//! (subset semantics), lists matched as the schema says, and what foreign managers added is
//! found through `managedFields`.

use serde_json::{Map, Value};

use super::managed::{FieldKey, ManagerEntry};
use super::normalize::{is_zero, numbers_equal, quantity_nanos};
use super::schema::{ListType, Schema, Step};

/// What happened to one field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ChangeKind {
    /// The live value differs from the manifest's.
    Modified,
    /// The manifest sets it; live does not have it.
    Removed,
    /// Live has it, the manifest does not, and a foreign manager put it there.
    Added,
}

/// One difference, before attribution and redaction.
#[derive(Clone, Debug, PartialEq)]
pub struct RawChange {
    /// RFC 6901 pointer into the desired object (into the live one for `Added`).
    pub pointer: String,
    pub desired: Option<Value>,
    pub live: Option<Value>,
    pub change: ChangeKind,
    /// The same place as `managedFields` names it, for attribution.
    pub field_path: Vec<FieldKey>,
    /// For `Added`: the manager that owns it.
    pub added_by: Option<super::managed::Attribution>,
}

#[derive(Clone, Debug)]
enum SchemaSeg {
    Field(String),
    Item,
}

struct Walk<'a> {
    schema: &'a dyn Schema,
    pointer: Vec<String>,
    field_path: Vec<FieldKey>,
    schema_path: Vec<SchemaSeg>,
    out: Vec<RawChange>,
}

pub fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn pointer_of(segments: &[String]) -> String {
    segments.iter().map(|s| format!("/{}", escape_pointer(s))).collect()
}

impl Walk<'_> {
    fn steps(&self) -> Vec<Step<'_>> {
        self.schema_path
            .iter()
            .map(|s| match s {
                SchemaSeg::Field(f) => Step::Field(f.as_str()),
                SchemaSeg::Item => Step::Item,
            })
            .collect()
    }

    fn push(&mut self, pointer: String, key: FieldKey, seg: SchemaSeg) {
        self.pointer.push(pointer);
        self.field_path.push(key);
        self.schema_path.push(seg);
    }

    fn pop(&mut self) {
        self.pointer.pop();
        self.field_path.pop();
        self.schema_path.pop();
    }

    fn record(&mut self, change: ChangeKind, desired: Option<&Value>, live: Option<&Value>) {
        self.out.push(RawChange {
            pointer: pointer_of(&self.pointer),
            desired: desired.cloned(),
            live: live.cloned(),
            change,
            field_path: self.field_path.clone(),
            added_by: None,
        });
    }

    fn value(&mut self, d: &Value, l: &Value) {
        match (d, l) {
            // An explicit null live is an absent field (`rules: null` of a ClusterRole whose
            // rules were never set): an empty value equals it, anything else was removed.
            (_, Value::Null) if is_zero(d) => {}
            (_, Value::Null) => self.record(ChangeKind::Removed, Some(d), None),
            (Value::Object(dm), Value::Object(lm)) => self.object(dm, lm),
            (Value::Array(da), Value::Array(la)) => self.list(da, la),
            _ => {
                if !self.scalars_equal(d, l) {
                    self.record(ChangeKind::Modified, Some(d), Some(l));
                }
            }
        }
    }

    fn object(&mut self, dm: &Map<String, Value>, lm: &Map<String, Value>) {
        for (k, dv) in dm {
            self.push(k.clone(), FieldKey::Field(k.clone()), SchemaSeg::Field(k.clone()));
            match lm.get(k) {
                Some(lv) => self.value(dv, lv),
                None if is_zero(dv) => {}
                None => self.record(ChangeKind::Removed, Some(dv), None),
            }
            self.pop();
        }
    }

    fn list(&mut self, da: &[Value], la: &[Value]) {
        match self.schema.list_type(&self.steps()) {
            ListType::Map(keys) => {
                for (i, ditem) in da.iter().enumerate() {
                    match find_by_keys(la, ditem, &keys) {
                        Some(litem) => {
                            let key = FieldKey::Key(key_values(litem, &keys));
                            self.push(i.to_string(), key, SchemaSeg::Item);
                            self.value(ditem, litem);
                            self.pop();
                        }
                        None => {
                            let key = FieldKey::Key(key_values(&with_defaults(ditem, &keys), &keys));
                            self.push(i.to_string(), key, SchemaSeg::Item);
                            self.record(ChangeKind::Removed, Some(ditem), None);
                            self.pop();
                        }
                    }
                }
            }
            ListType::Set => {
                for (i, ditem) in da.iter().enumerate() {
                    if !la.iter().any(|l| self.scalars_equal(ditem, l)) {
                        self.push(i.to_string(), FieldKey::Value(ditem.clone()), SchemaSeg::Item);
                        self.record(ChangeKind::Removed, Some(ditem), None);
                        self.pop();
                    }
                }
            }
            ListType::Atomic | ListType::Unknown => {
                if da.len() != la.len() {
                    self.record(ChangeKind::Modified, Some(&Value::Array(da.to_vec())), Some(&Value::Array(la.to_vec())));
                    return;
                }
                for (i, (ditem, litem)) in da.iter().zip(la).enumerate() {
                    self.push(i.to_string(), FieldKey::Index(i), SchemaSeg::Item);
                    self.value(ditem, litem);
                    self.pop();
                }
            }
        }
    }

    fn scalars_equal(&self, d: &Value, l: &Value) -> bool {
        match (d, l) {
            (Value::Number(a), Value::Number(b)) if numbers_equal(a, b) => return true,
            _ if d == l => return true,
            _ => {}
        }
        if self.schema.is_quantity(&self.steps()) {
            let text = |v: &Value| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            if let (Some(a), Some(b)) = (text(d).and_then(|s| quantity_nanos(&s)), text(l).and_then(|s| quantity_nanos(&s))) {
                return a == b;
            }
        }
        false
    }
}

/// Key fields a desired item leaves out take the API's default (`protocol: TCP`).
fn with_defaults(item: &Value, keys: &[String]) -> Value {
    let mut item = item.clone();
    if let Value::Object(m) = &mut item {
        for k in keys {
            if k == "protocol" && !m.contains_key(k) {
                m.insert(k.clone(), Value::String("TCP".into()));
            }
        }
    }
    item
}

fn key_values(item: &Value, keys: &[String]) -> Map<String, Value> {
    keys.iter()
        .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
        .collect()
}

fn find_by_keys<'a>(live: &'a [Value], desired_item: &Value, keys: &[String]) -> Option<&'a Value> {
    let want = key_values(&with_defaults(desired_item, keys), keys);
    if want.is_empty() {
        return None;
    }
    live.iter().find(|l| want.iter().all(|(k, v)| l.get(k).is_some_and(|lv| lv == v || loosely_equal(lv, v))))
}

fn loosely_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => numbers_equal(x, y),
        _ => false,
    }
}

/// Follows a `managedFields` path through an object; returns the value and its pointer.
pub fn navigate<'v>(root: &'v Value, path: &[FieldKey]) -> Option<(&'v Value, String)> {
    let mut node = root;
    let mut pointer = String::new();
    for key in path {
        let (next, seg) = match (key, node) {
            (FieldKey::Field(f), Value::Object(m)) => (m.get(f)?, f.clone()),
            (FieldKey::Key(want), Value::Array(items)) => {
                let keys: Vec<String> = want.keys().cloned().collect();
                let i = items.iter().position(|item| {
                    let item = with_defaults(item, &keys);
                    want.iter().all(|(k, v)| item.get(k).is_some_and(|iv| iv == v || loosely_equal(iv, v)))
                })?;
                (&items[i], i.to_string())
            }
            (FieldKey::Value(want), Value::Array(items)) => {
                let i = items.iter().position(|item| item == want)?;
                (&items[i], i.to_string())
            }
            (FieldKey::Index(i), Value::Array(items)) => (items.get(*i)?, i.to_string()),
            _ => return None,
        };
        node = next;
        pointer.push('/');
        pointer.push_str(&escape_pointer(&seg));
    }
    Some((node, pointer))
}

/// Compares a prepared desired object with the live one. `foreign` are the paths foreign
/// managers own (see `ManagedFields::foreign_paths`).
pub fn compare(desired: &Value, live: &Value, schema: &dyn Schema, foreign: &[(Vec<FieldKey>, &ManagerEntry)]) -> Vec<RawChange> {
    let mut walk = Walk { schema, pointer: Vec::new(), field_path: Vec::new(), schema_path: Vec::new(), out: Vec::new() };
    walk.value(desired, live);
    let mut out = walk.out;

    // Added: owned by a foreign manager, present live, absent from the manifest. Reported at
    // the shallowest place the manifest lacks, once.
    let mut seen: Vec<Vec<FieldKey>> = Vec::new();
    for (path, entry) in foreign {
        let missing_at = (1..=path.len()).find(|n| navigate(desired, &path[..*n]).is_none());
        let Some(n) = missing_at else { continue };
        // Report a whole added list item, or else the added field itself, not the map that
        // holds it (an added annotation, not "the annotations").
        let n = (n..=path.len())
            .find(|&m| m == path.len() || matches!(path[m - 1], FieldKey::Key(_) | FieldKey::Value(_) | FieldKey::Index(_)))
            .unwrap_or(path.len());
        let prefix = &path[..n];
        if seen.iter().any(|s| prefix.starts_with(s)) || out.iter().any(|c| prefix.starts_with(&c.field_path)) {
            continue;
        }
        let Some((live_value, pointer)) = navigate(live, prefix) else { continue };
        seen.push(prefix.to_vec());
        out.push(RawChange {
            pointer,
            desired: None,
            live: Some(live_value.clone()),
            change: ChangeKind::Added,
            field_path: prefix.to_vec(),
            added_by: Some(entry.attribution()),
        });
    }
    out
}
