//! The pure drift engine: a desired object (from the release manifest) against the live one,
//! to per-field changes with who made them. No client: everything here is data in, data out.

pub mod compare;
pub mod ignore;
pub mod managed;
pub mod normalize;
pub mod schema;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use compare::ChangeKind;
pub use ignore::{IgnoreRule, IgnoreRules, IgnoreTarget, ObjectIdentity};
pub use managed::{Attribution, ManagedFields};
pub use schema::{BuiltinSchema, ListType, OpenApiSchema, Schema};

/// An object's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum ObjectState {
    InSync,
    /// At least one field the manifest sets differs live, or was removed live.
    Modified,
    /// The object does not exist live.
    Missing,
    /// Only fields the manifest does not set were added, by a foreign manager.
    Added,
    /// The object could not be checked; `message` says why.
    Error,
}

/// One drifted field, as reported.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldDrift {
    /// RFC 6901 pointer into the desired object (into the live one for `Added`).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Value>,
    pub change: ChangeKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The same place as `managedFields` names it (list items by key), to find it in another
    /// version of the object whatever the order of its lists.
    #[serde(skip)]
    pub locator: Vec<managed::FieldKey>,
}

/// What to leave out of a comparison.
#[derive(Clone, Copy, Debug, Default)]
pub struct Exclusions<'a> {
    /// JSON pointers (ignored with everything under them).
    pub paths: &'a [&'a str],
    /// Changes made by these managers are not drift.
    pub managers: &'a [String],
}

/// Compares one desired object (as the manifest has it) with its live object.
pub fn diff_object(desired: &Value, live: &Value, schema: &dyn Schema, exclude: Exclusions) -> (ObjectState, Vec<FieldDrift>) {
    let prepared = normalize::desired_for_compare(desired);
    let managed = ManagedFields::from_object(live);
    let foreign = managed.foreign_paths(exclude.managers);
    let is_secret = desired.get("kind").and_then(Value::as_str) == Some("Secret");
    let mut fields = Vec::new();
    for raw in compare::compare(&prepared, live, schema, &foreign) {
        if exclude.paths.iter().any(|p| ignore::pointer_is_under(&raw.pointer, p)) {
            continue;
        }
        let who = match raw.added_by.clone() {
            Some(a) => Some(a),
            None => managed.attribute(&raw.field_path),
        };
        if who.as_ref().is_some_and(|a| exclude.managers.contains(&a.manager)) {
            continue;
        }
        let (desired, live) = if is_secret {
            (raw.desired.as_ref().map(redact), raw.live.as_ref().map(redact))
        } else {
            (raw.desired, raw.live)
        };
        fields.push(FieldDrift {
            path: raw.pointer,
            desired,
            live,
            change: raw.change,
            manager: who.as_ref().map(|a| a.manager.clone()),
            operation: who.as_ref().map(|a| a.operation.clone()),
            time: who.and_then(|a| a.time),
            locator: raw.field_path,
        });
    }
    (ObjectState::of_fields(&fields), fields)
}

impl ObjectState {
    /// The verdict of an object that exists live, from its drifted fields.
    pub fn of_fields(fields: &[FieldDrift]) -> ObjectState {
        if fields.is_empty() {
            ObjectState::InSync
        } else if fields.iter().all(|f| f.change == ChangeKind::Added) {
            ObjectState::Added
        } else {
            ObjectState::Modified
        }
    }
}

/// A Secret's value as reports show it: never the value, only a short digest to tell two
/// values apart.
pub fn redact(v: &Value) -> Value {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    Value::String(format!("(redacted, sha256:{hex})"))
}

#[cfg(test)]
mod table;
