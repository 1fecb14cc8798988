//! What `driftwatch check` prints: a readable per-object diff with who changed what and when
//! (coloured on a terminal), or the documented JSON/YAML shape.

use std::fmt::Write as _;

use serde_json::Value;

use crate::report::ReleaseReport;
use crate::drift::{ChangeKind, ObjectState};

#[derive(Clone, Copy)]
pub struct Style {
    pub colour: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.colour { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }
    fn red(&self, s: &str) -> String {
        self.paint("31", s)
    }
    fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }
    fn yellow(&self, s: &str) -> String {
        self.paint("33", s)
    }
    fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
    fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
}

fn show(v: &Option<Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

pub fn render_text(reports: &[ReleaseReport], style: Style) -> String {
    let mut out = String::new();
    for r in reports {
        let verdict = if r.error.is_some() {
            style.red("NOT CHECKED")
        } else if r.drifted {
            let n = r.summary.modified + r.summary.missing + r.summary.added;
            style.yellow(&format!("DRIFTED ({n} of {} resources)", r.summary.resources))
        } else if r.summary.errors > 0 {
            style.yellow(&format!("IN SYNC where checked ({} of {} could not be checked)", r.summary.errors, r.summary.resources))
        } else {
            style.green(&format!("IN SYNC ({} resources)", r.summary.resources))
        };
        let _ = writeln!(
            out,
            "{} {}/{}  revision {}  {}-{}  {}  {}",
            style.bold("Release"),
            r.namespace,
            r.name,
            r.revision,
            r.chart,
            r.chart_version,
            r.status,
            verdict
        );
        if let Some(e) = &r.error {
            let _ = writeln!(out, "  {}", style.red(e));
        }
        match &r.policy {
            Some(p) if p.applied => {
                let _ = writeln!(out, "  {}", style.dim(&format!("policy {} applied (its ignore rules and managers)", p.name)));
            }
            Some(p) => {
                let _ = writeln!(
                    out,
                    "  {}",
                    style.dim(&format!("policy {} covers this release; its ignore rules were not applied (add --policy {} for the report's answer)", p.name, p.name))
                );
            }
            None => {}
        }
        for f in &r.findings {
            let _ = writeln!(out, "  {} {}  (next: {})", style.yellow(&format!("[{}]", f.kind)), f.message, f.hint);
        }
        for res in r.resources.iter().filter(|res| res.state != ObjectState::InSync) {
            let ns = res.namespace.as_ref().map(|n| format!("{n}/")).unwrap_or_default();
            let state = match res.state {
                ObjectState::Missing => style.red("Missing"),
                ObjectState::Error => style.red("Error"),
                ObjectState::Added => style.green("Added"),
                _ => style.yellow("Modified"),
            };
            let kind = if res.kind.is_empty() { "manifest".to_string() } else { res.kind.clone() };
            let _ = writeln!(out, "  {kind} {ns}{}: {state}", res.name);
            if let Some(m) = &res.message {
                let _ = writeln!(out, "      {}", style.dim(m));
            }
            for f in &res.fields {
                let who = who(f);
                let line = match f.change {
                    ChangeKind::Modified => style.yellow(&format!("~ {}: {} -> {}", f.path, show(&f.desired), show(&f.live))),
                    ChangeKind::Removed => style.red(&format!("- {}: {} (removed live)", f.path, show(&f.desired))),
                    ChangeKind::Added => style.green(&format!("+ {}: {} (not in the manifest)", f.path, show(&f.live))),
                };
                let _ = writeln!(out, "      {line}{}", style.dim(&who));
            }
        }
        for op in r.operations() {
            let ns = op.namespace.as_ref().map(|n| format!("{n}/")).unwrap_or_default();
            let by = op.operation.manager.as_deref().unwrap_or("unknown");
            let at = op.operation.time.as_ref().map(|t| format!(" at {t}")).unwrap_or_default();
            let what = match op.operation.action.as_str() {
                "Restarted" => format!("restarted by {by}{at}"),
                "ClientSideApplied" => format!("client-side applied by {by}{at}"),
                other => format!("{other} by {by}{at}"),
            };
            let _ = writeln!(out, "  {}", style.dim(&format!("{} {ns}{}: {what} (an action, not drift)", op.kind, op.name)));
        }
    }
    if reports.is_empty() {
        out.push_str("No Helm releases found.\n");
    }
    out
}

/// Who made a change, as Kubernetes recorded it; for a change it recorded no owner for, that
/// it did not, and who wrote the object since the release was deployed.
fn who(f: &crate::drift::FieldDrift) -> String {
    let via = f.subresource.as_ref().map(|s| format!(" via {s}")).unwrap_or_default();
    let seen = f.seen.as_ref().map(|t| format!(", first seen {t}")).unwrap_or_default();
    match (&f.manager, &f.operation, &f.time) {
        (Some(m), Some(op), Some(t)) => format!("  by {m} ({op}{via}, {t}{seen})"),
        (Some(m), Some(op), None) => format!("  by {m} ({op}{via}{seen})"),
        (Some(m), None, _) => format!("  by {m}{via}"),
        (None, _, _) => {
            let candidates = if f.candidates.is_empty() {
                String::new()
            } else {
                format!("; wrote the object since the deploy: {} (candidates, not a record)", f.candidates.join(", "))
            };
            format!("  by unknown — Kubernetes records no owner for removed fields{seen}{candidates}")
        }
    }
}

/// The documented machine-readable shape: every resource listed, InSync ones too.
pub fn document(reports: &[ReleaseReport]) -> Value {
    serde_json::json!({ "releases": reports })
}

#[cfg(test)]
mod tests {
    use super::who;
    use crate::drift::{ChangeKind, FieldDrift};

    fn f(manager: Option<&str>, subresource: Option<&str>, time: Option<&str>, candidates: &[&str]) -> FieldDrift {
        FieldDrift {
            path: "/spec/x".into(),
            desired: None,
            live: None,
            change: ChangeKind::Removed,
            manager: manager.map(str::to_string),
            operation: manager.map(|_| "Update".to_string()),
            subresource: subresource.map(str::to_string),
            time: time.map(str::to_string),
            candidates: candidates.iter().map(|c| c.to_string()).collect(),
            seen: None,
            locator: vec![],
        }
    }

    #[test]
    fn who_is_said_as_recorded() {
        assert_eq!(who(&f(Some("kubectl-edit"), None, Some("2026-01-01T00:00:00Z"), &[])), "  by kubectl-edit (Update, 2026-01-01T00:00:00Z)");
        assert_eq!(who(&f(Some("kubectl"), Some("scale"), None, &[])), "  by kubectl (Update via scale)");
        assert_eq!(who(&f(None, None, None, &[])), "  by unknown — Kubernetes records no owner for removed fields");
        assert_eq!(
            who(&f(None, None, None, &["kubectl-label", "kubectl-patch"])),
            "  by unknown — Kubernetes records no owner for removed fields; wrote the object since the deploy: kubectl-label, kubectl-patch (candidates, not a record)"
        );
        let mut seen = f(None, None, None, &[]);
        seen.seen = Some("2026-01-02T00:00:00Z".into());
        assert!(who(&seen).contains(", first seen 2026-01-02T00:00:00Z"));
    }
}
