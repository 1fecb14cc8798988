//! `driftwatch diagnose RELEASE -n NS`: the release's status and history (as `helm status` and
//! `helm history` show them), its findings, the diagnosis of its failure with the evidence, the
//! drift against its deployed revision, and the next commands — cause first. The document is
//! the JSON output (`-o json`, stable: PRODUCT.md's twin documents it); the text is made from it.

use serde::Serialize;

use crate::report::{Diagnosis, Finding, FindingResource, Summary};

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub name: String,
    pub namespace: String,
    /// The newest revision (None: the release has no record).
    pub release: Option<ReleaseView>,
    /// No finding but `Stale`, and the newest revision deployed.
    pub healthy: bool,
    /// One line: what is wrong (or that nothing is).
    pub summary: String,
    pub diagnosis: Option<Diagnosis>,
    pub findings: Vec<Finding>,
    pub drift: Option<DriftView>,
    /// Newest first, at most [`HISTORY`] revisions.
    pub history: Vec<HistoryEntry>,
    /// What to run next, in order.
    pub next: Vec<String>,
}

/// Revisions shown (and decoded) at most, newest first.
pub const HISTORY: usize = 10;

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseView {
    pub revision: u32,
    pub status: String,
    pub chart: String,
    pub chart_version: String,
    pub app_version: String,
    pub updated: Option<String>,
    pub description: String,
    pub apply_method: String,
    /// The newest deployed revision (what drift is checked against, and what a rollback goes to).
    pub deployed_revision: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub revision: u32,
    pub status: String,
    pub chart: String,
    pub app_version: String,
    pub updated: Option<String>,
    pub description: String,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriftView {
    pub revision: u32,
    pub drifted: bool,
    pub summary: Summary,
    /// The objects that are not in sync: `Kind/name state`.
    pub resources: Vec<FindingResource>,
    /// The check could not run: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Document {
    /// Fills `healthy`, `summary` and `next` from the rest.
    pub fn conclude(&mut self) {
        let (healthy, reason, message) = crate::diagnose::health_condition(None, &self.findings);
        let pending = self.release.as_ref().is_some_and(|r| r.status.starts_with("pending-"));
        let failed = self.release.as_ref().is_some_and(|r| r.status == "failed");
        self.healthy = healthy && !pending && !failed && self.diagnosis.is_none();
        self.summary = match (&self.diagnosis, &self.release) {
            (Some(d), _) => format!("{}: {}", d.cause, d.summary),
            (None, _) if !healthy => format!("{reason}: {message}"),
            (None, Some(r)) if pending => format!("revision {} is {} (Helm holds its lock; not yet past the pending timeout)", r.revision, r.status),
            (None, Some(r)) => format!("healthy: revision {} is {}", r.revision, r.status),
            (None, None) => "no Helm record and no object stamped for this release".into(),
        };
        let mut next: Vec<String> = self.diagnosis.iter().flat_map(|d| d.next.iter().cloned()).collect();
        for f in &self.findings {
            if f.diagnosis.is_none() && !next.contains(&f.hint) {
                next.push(f.hint.clone());
            }
        }
        if let Some(d) = &self.drift
            && d.drifted
        {
            next.push(format!("driftwatch check {} -n {}   # the drifted fields, who changed them, when", self.name, self.namespace));
        }
        // One line per command: a hint that runs the same command (its first four words) as
        // an earlier line adds nothing.
        let mut seen = std::collections::HashSet::new();
        next.retain(|c| seen.insert(c.split_whitespace().take(4).collect::<Vec<_>>().join(" ")));
        self.next = next;
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The text a person reads at 2 AM: the cause, the evidence, the findings, the drift, the
/// history, the commands.
pub fn render_text(d: &Document) -> String {
    let mut out = String::new();
    let head = match &d.release {
        Some(r) => format!(
            "{} (namespace {}): revision {} {}, chart {}-{}, app {}{}\n",
            d.name,
            d.namespace,
            r.revision,
            r.status.to_uppercase(),
            r.chart,
            r.chart_version,
            r.app_version,
            r.deployed_revision.filter(|g| *g != r.revision).map(|g| format!("; deployed revision {g}")).unwrap_or_default()
        ),
        None => format!("{} (namespace {}): no Helm record\n", d.name, d.namespace),
    };
    out.push_str(&head);
    out.push_str(&format!("\n{}\n", d.summary));
    if let Some(diag) = &d.diagnosis
        && !diag.evidence.is_empty()
    {
        out.push_str("\nEvidence:\n");
        for e in &diag.evidence {
            out.push_str(&format!("  {}\n", one_line(e)));
        }
    }
    if !d.findings.is_empty() {
        out.push_str("\nFindings:\n");
        let width = d.findings.iter().map(|f| f.kind.len()).max().unwrap_or(0);
        for f in &d.findings {
            out.push_str(&format!("  {:width$}   {}\n", f.kind, one_line(&f.message)));
            for r in f.resources.iter().take(10) {
                let state = r.state.as_deref().map(|s| format!(": {s}")).unwrap_or_default();
                out.push_str(&format!("  {:width$}     {}/{}{state}\n", "", r.kind, r.name));
            }
        }
    }
    if let Some(drift) = &d.drift {
        out.push('\n');
        match (&drift.error, drift.drifted) {
            (Some(e), _) => out.push_str(&format!("Drift: not checked ({})\n", one_line(e))),
            (None, false) => out.push_str(&format!("Drift: none; all {} resources match revision {}\n", drift.summary.resources, drift.revision)),
            (None, true) => {
                out.push_str(&format!("Drift: {} of {} resources differ from revision {}:\n", drift.resources.len(), drift.summary.resources, drift.revision));
                for r in drift.resources.iter().take(10) {
                    out.push_str(&format!("  {}/{}: {}\n", r.kind, r.name, r.state.as_deref().unwrap_or_default()));
                }
            }
        }
    }
    if !d.history.is_empty() {
        out.push_str("\nHistory:\n");
        let rows: Vec<Vec<String>> = d
            .history
            .iter()
            .map(|h| {
                let mut desc = one_line(&h.description);
                if desc.chars().count() > 100 {
                    desc = desc.chars().take(97).collect::<String>() + "...";
                }
                let updated = h.updated.as_deref().map(|t| t.chars().take(19).collect::<String>().replace('T', " ")).unwrap_or_default();
                vec![h.revision.to_string(), updated, h.status.clone(), h.chart.clone(), h.app_version.clone(), desc]
            })
            .collect();
        for line in super::columns::render(&["REVISION", "UPDATED", "STATUS", "CHART", "APP VERSION", "DESCRIPTION"], &rows).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    if !d.next.is_empty() {
        out.push_str("\nNext:\n");
        for c in &d.next {
            out.push_str(&format!("  {c}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_comes_first_then_evidence_then_commands() {
        let mut d = Document {
            name: "app".into(),
            namespace: "shop".into(),
            release: Some(ReleaseView { revision: 2, status: "failed".into(), chart: "fullstack".into(), chart_version: "1.0.0".into(), app_version: "2.4.1".into(), deployed_revision: Some(1), ..Default::default() }),
            diagnosis: Some(Diagnosis {
                cause: "HookFailed".into(),
                summary: "the pre-upgrade hook Job app-migrate failed".into(),
                evidence: vec!["Job app-migrate (pre-upgrade hook): BackoffLimitExceeded".into()],
                next: vec!["kubectl logs job/app-migrate -n shop --all-containers".into()],
            }),
            findings: vec![Finding { kind: "HookOrphans".into(), message: "left behind: Job/app-migrate".into(), hint: "kubectl delete job/app-migrate -n shop".into(), ..Default::default() }],
            history: vec![HistoryEntry { revision: 2, status: "failed".into(), chart: "fullstack-1.0.0".into(), description: "Upgrade \"app\" failed:\n\t* job failed".into(), ..Default::default() }],
            ..Default::default()
        };
        d.conclude();
        assert!(!d.healthy);
        assert_eq!(d.next, ["kubectl logs job/app-migrate -n shop --all-containers", "kubectl delete job/app-migrate -n shop"]);
        let text = render_text(&d);
        let at = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s:?} not in\n{text}"));
        assert!(at("revision 2 FAILED") < at("HookFailed: the pre-upgrade hook") && at("HookFailed: the pre-upgrade") < at("Evidence:"));
        assert!(at("Evidence:") < at("Findings:") && at("Findings:") < at("History:") && at("History:") < at("Next:"));
        assert!(text.contains("Upgrade \"app\" failed: * job failed"), "descriptions on one line:\n{text}");
    }

    #[test]
    fn a_healthy_release_says_so() {
        let mut d = Document { name: "app".into(), namespace: "shop".into(), release: Some(ReleaseView { revision: 3, status: "deployed".into(), ..Default::default() }), ..Default::default() };
        d.conclude();
        assert!(d.healthy);
        assert_eq!(d.summary, "healthy: revision 3 is deployed");
    }
}
