//! The pure drift engine: a desired object (from the release manifest) against the live one,
//! to per-field changes with who made them. No client: everything here is data in, data out.

pub mod compare;
pub mod ignore;
pub mod managed;
pub mod normalize;
pub mod schema;
pub mod system;
pub mod digest;

use serde::Serialize;
use serde_json::Value;

pub use compare::ChangeKind;
pub use digest::DigestKey;
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
    /// The manager Kubernetes recorded as the owner of this path; absent when it recorded none
    /// (a removed field): never a guess.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The subresource the owner wrote through (`scale`); such entries carry no time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// When no owner is recorded: the managers that wrote the object since the reference
    /// revision was deployed. Candidates, never the answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<String>,
    /// When the controller's watch first saw this field drift (RFC 3339), kept across
    /// re-checks and restarts. The CLI, which looks once, leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<String>,
    /// The same place as `managedFields` names it (list items by key), to find it in another
    /// version of the object whatever the order of its lists.
    #[serde(skip)]
    pub locator: Vec<managed::FieldKey>,
}

/// An operational action seen on an object: not configuration drift unless a policy says so.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// `Restarted` (`kubectl rollout restart`) or `ClientSideApplied` (`kubectl apply` without
    /// `--server-side`).
    pub action: String,
    /// Where its stamp is (a pointer into the live object).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    /// When: the restart's own timestamp, else the manager's entry time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// Well-known annotations that record an action, not a configuration: (annotation, action).
pub const OPERATIONAL_ANNOTATIONS: &[(&str, &str)] =
    &[("kubectl.kubernetes.io/restartedAt", "Restarted"), ("kubectl.kubernetes.io/last-applied-configuration", "ClientSideApplied")];

/// The operational annotation a pointer ends in, if any: (annotation, action).
fn operational(pointer: &str) -> Option<(&'static str, &'static str)> {
    OPERATIONAL_ANNOTATIONS
        .iter()
        .copied()
        .find(|(a, _)| pointer.strip_suffix(&compare::escape_pointer(a)).is_some_and(|head| head.ends_with("/metadata/annotations/")))
}

/// How to compare.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiffOptions<'a> {
    /// JSON pointers (ignored with everything under them).
    pub paths: &'a [&'a str],
    /// Changes made by these managers are not drift.
    pub managers: &'a [String],
    /// Count operational annotations (rollout restarts, client-side apply) as drift.
    pub operations_as_drift: bool,
    /// When the reference revision was deployed: who wrote the object since then are the
    /// candidates for a change Kubernetes records no owner for.
    pub deployed_at: Option<jiff::Timestamp>,
    /// The key of Secret digests (None: this process's random key).
    pub digest_key: Option<&'a DigestKey>,
}

/// One object's comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectDiff {
    pub state: ObjectState,
    pub fields: Vec<FieldDrift>,
    /// Operational actions seen (when they do not count as drift).
    pub operations: Vec<Operation>,
}

/// Compares one desired object (as the manifest has it) with its live object.
pub fn diff_object(desired: &Value, live: &Value, schema: &dyn Schema, opts: DiffOptions) -> ObjectDiff {
    let prepared = normalize::desired_for_compare(desired);
    let managed = ManagedFields::from_object(live);
    let api_version = desired.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = desired.get("kind").and_then(Value::as_str).unwrap_or_default();
    let mut foreign = managed.foreign_paths(opts.managers);
    foreign.retain(|(path, e)| !system::fills(api_version, kind, desired, &e.manager, e.subresource.as_deref(), path));
    let system_paths = system::always_owned(api_version, kind, desired);
    let is_secret = kind == "Secret";
    let key = opts.digest_key.unwrap_or_else(|| DigestKey::per_run());
    let mut fields = Vec::new();
    let mut operations = Vec::new();
    for raw in compare::compare(&prepared, live, schema, &foreign) {
        if opts.paths.iter().chain(&system_paths).any(|p| ignore::pointer_is_under(&raw.pointer, p)) {
            continue;
        }
        let who = match raw.added_by.clone() {
            Some(a) => Some(a),
            None => managed.attribute(&raw.field_path),
        };
        if who.as_ref().is_some_and(|a| opts.managers.contains(&a.manager)) {
            continue;
        }
        let op = if raw.change == ChangeKind::Added { operational(&raw.pointer) } else { None };
        if let (Some((_, action)), false) = (op, opts.operations_as_drift) {
            let stamped = (action == "Restarted").then(|| raw.live.as_ref().and_then(Value::as_str).map(str::to_string)).flatten();
            operations.push(Operation {
                action: action.to_string(),
                path: raw.pointer,
                manager: who.as_ref().map(|a| a.manager.clone()),
                time: stamped.or_else(|| who.as_ref().and_then(|a| a.time.clone())),
            });
            continue;
        }
        let candidates = if who.is_none() {
            // Kubernetes' own components and ignored managers are never who a person was.
            managed.candidates(opts.deployed_at, |m| system::is_system_manager(m) || opts.managers.iter().any(|i| i == m))
        } else {
            Vec::new()
        };
        let (desired, live) = if is_secret {
            (raw.desired.as_ref().map(|v| key.redact(v)), raw.live.as_ref().map(|v| key.redact(v)))
        } else if op.is_some_and(|(a, _)| a == "kubectl.kubernetes.io/last-applied-configuration") {
            // The whole object as last applied: long, and a copy of everything else.
            let size = raw.live.as_ref().and_then(Value::as_str).map_or(0, str::len);
            (None, Some(Value::String(format!("(client-side apply configuration, {size} bytes)"))))
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
            subresource: who.as_ref().and_then(|a| a.subresource.clone()),
            time: who.and_then(|a| a.time),
            candidates,
            seen: None,
            locator: raw.field_path,
        });
    }
    ObjectDiff { state: ObjectState::of_fields(&fields), fields, operations }
}

impl ObjectState {
    /// Whether the object has drifted (Modified, Missing or Added; not InSync, not Error).
    pub fn is_drift(self) -> bool {
        matches!(self, ObjectState::Modified | ObjectState::Missing | ObjectState::Added)
    }

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

#[cfg(test)]
mod cases;
