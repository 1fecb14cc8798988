//! Release-level findings (PRODUCT.md section 1) from facts about a release: its history, its
//! reference revision's deployment time, what the live objects of a failed revision match, the
//! hook objects left behind, the stamped objects its manifest lacks, and a diagnosis.

use std::time::Duration;

use jiff::Timestamp;

use crate::helm::{ReleaseHistory, ReleaseStatus};
use crate::report::{Diagnosis, Finding, FindingResource};

/// The policy's `health` settings, parsed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub pending_timeout: Duration,
    pub stale_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { pending_timeout: Duration::from_secs(15 * 60), stale_after: Duration::from_secs(720 * 3600) }
    }
}

impl Thresholds {
    /// From a policy's `health` (an unparsable value keeps the default: the policy is then
    /// `Ready=False` anyway).
    pub fn of(spec: &crate::api::HealthSpec) -> Self {
        let d = Thresholds::default();
        Thresholds {
            pending_timeout: crate::api::parse_duration(&spec.pending_timeout).unwrap_or(d.pending_timeout),
            stale_after: crate::api::parse_duration(&spec.stale_after).unwrap_or(d.stale_after),
        }
    }
}

/// What the findings are made from. Everything but `history` and `now` is optional evidence
/// the caller gathered (only for a release whose newest revision is not `deployed`, so that a
/// healthy release costs no request).
pub struct HealthFacts<'a> {
    pub history: &'a ReleaseHistory,
    pub now: Timestamp,
    pub thresholds: Thresholds,
    /// When the reference revision was deployed.
    pub last_deployed: Option<Timestamp>,
    /// Per object of a failed newest revision, the revision its live version matches
    /// ([`partial_state`]).
    pub partial: Vec<FindingResource>,
    /// Hook objects of the newest revision still there after it failed or stalled.
    pub hook_orphans: Vec<FindingResource>,
    /// Live objects stamped for the release that its reference manifest lacks.
    pub orphans: Vec<FindingResource>,
    pub diagnosis: Option<Diagnosis>,
}

/// When the newest revision got its status ([`crate::helm::RecordMeta::since`]).
fn status_since(history: &ReleaseHistory) -> Option<Timestamp> {
    let latest = history.latest();
    latest.since().and_then(|s| Timestamp::from_second(s).ok())
}

/// How long ago `then` was, short: `45s`, `12m`, `5h`, `21d`.
pub fn ago(now: Timestamp, then: Timestamp) -> String {
    let secs = (now.as_second() - then.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The state of one object of a failed revision for `PartialUpgrade`: `failed` (the live object
/// is as the failed revision sets it), `reference` (still as the deployed one), `neither`. An
/// object only the failed revision has is `failed` when it exists, `reference` when it does not.
pub fn partial_state(in_reference: bool, exists: bool, matches_failed: bool, matches_reference: bool) -> Option<&'static str> {
    match (in_reference, exists, matches_failed, matches_reference) {
        (_, _, true, true) => None, // both revisions agree: says nothing
        (false, false, _, _) => Some("reference"),
        (true, false, _, _) => Some("missing"),
        (_, true, true, false) => Some("failed"),
        (_, true, false, true) => Some("reference"),
        (_, true, false, false) => Some("neither"),
    }
}

pub fn findings(f: &HealthFacts) -> Vec<Finding> {
    let h = f.history;
    let (r, n) = (&h.name, &h.namespace);
    let latest = h.latest();
    let reference = h.reference().map(|r| r.revision);
    let mut out = Vec::new();
    let diagnose = format!("driftwatch diagnose {r} -n {n}");
    if latest.status.is_pending()
        && let Some(since) = status_since(h)
        && (f.now.as_second() - since.as_second()) as f64 > f.thresholds.pending_timeout.as_secs_f64()
    {
        out.push(Finding {
            kind: "StuckPending".into(),
            message: format!(
                "revision {} has been {} for {} (health.pendingTimeout {}s): Helm's lock is held and every upgrade or rollback fails with \"another operation is in progress\"",
                latest.revision,
                latest.status,
                ago(f.now, since),
                f.thresholds.pending_timeout.as_secs()
            ),
            hint: format!("{diagnose}; once no helm process runs it: driftwatch unlock {r} -n {n}"),
            resources: Vec::new(),
            diagnosis: f.diagnosis.clone(),
        });
    }
    if latest.status == ReleaseStatus::Failed {
        let at = reference.map_or_else(|| "no revision is deployed".to_string(), |g| format!("drift is reported against revision {g}"));
        let cause = f.diagnosis.as_ref().map(|d| format!(": {} ({})", d.summary, d.cause)).unwrap_or_default();
        out.push(Finding {
            kind: "Failed".into(),
            message: format!("revision {} failed{cause}; {at}", latest.revision),
            hint: f.diagnosis.as_ref().and_then(|d| d.next.first().cloned()).map_or(diagnose.clone(), |c| format!("{diagnose}; then {c}")),
            resources: Vec::new(),
            diagnosis: f.diagnosis.clone(),
        });
        let at_failed = f.partial.iter().filter(|o| o.state.as_deref() == Some("failed")).count();
        let at_reference = f.partial.iter().filter(|o| matches!(o.state.as_deref(), Some("reference" | "missing"))).count();
        if at_failed > 0 && at_reference > 0 {
            let good = reference.map_or_else(|| "the previous revision".to_string(), |g| format!("revision {g}"));
            out.push(Finding {
                kind: "PartialUpgrade".into(),
                message: format!("revision {} was applied part-way: {at_failed} object(s) match it, {at_reference} still match {good}", latest.revision),
                hint: match reference {
                    Some(g) => format!("helm rollback {r} {g} -n {n} puts the {at_failed} back; or fix the cause and helm upgrade again"),
                    None => format!("fix the cause and helm upgrade --install {r} again"),
                },
                resources: f.partial.clone(),
                diagnosis: None,
            });
        }
    }
    if !f.hook_orphans.is_empty() {
        let names: Vec<String> = f.hook_orphans.iter().map(FindingResource::short).collect();
        out.push(Finding {
            kind: "HookOrphans".into(),
            message: format!("hook object(s) of revision {} left behind: {}", latest.revision, names.join(", ")),
            hint: format!(
                "kubectl delete {} -n {n}   # once its logs are read (kubectl logs {} -n {n}); Helm deletes a hook itself only before that hook runs again, with hook-delete-policy before-hook-creation (the default)",
                names.iter().map(|s| s.to_lowercase()).collect::<Vec<_>>().join(" "),
                names[0].to_lowercase()
            ),
            resources: f.hook_orphans.clone(),
            diagnosis: None,
        });
    }
    if !f.orphans.is_empty() {
        let names: Vec<String> = f.orphans.iter().take(5).map(FindingResource::short).collect();
        let more = f.orphans.len().saturating_sub(5);
        out.push(Finding {
            kind: "OrphanedResources".into(),
            message: format!(
                "{} object(s) stamped for this release are not in revision {}'s manifest: {}{}",
                f.orphans.len(),
                reference.unwrap_or(latest.revision),
                names.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() }
            ),
            hint: format!("kubectl delete {} -n {n} if nothing uses it; Helm will not (it deletes only what a revision it replaces had)", names[0].to_lowercase()),
            resources: f.orphans.clone(),
            diagnosis: None,
        });
    }
    if let Some(t) = f.last_deployed
        && (f.now.as_second() - t.as_second()) as f64 > f.thresholds.stale_after.as_secs_f64()
    {
        out.push(Finding {
            kind: "Stale".into(),
            message: format!("last deployed {} ago (revision {}), longer than health.staleAfter ({}h)", ago(f.now, t), reference.unwrap_or(latest.revision), f.thresholds.stale_after.as_secs() / 3600),
            hint: format!("helm upgrade {r} CHART -n {n} to pick up the chart's fixes, or raise the policy's health.staleAfter"),
            resources: Vec::new(),
            diagnosis: None,
        });
    }
    out
}

/// When a pending revision not yet past the timeout turns `StuckPending` (from `now`): the
/// controller looks again then, as nothing else may change by that time.
pub fn stuck_in(history: &ReleaseHistory, thresholds: Thresholds, now: Timestamp) -> Option<Duration> {
    let latest = history.latest();
    if !latest.status.is_pending() {
        return None;
    }
    let since = status_since(history)?;
    let age = (now.as_second() - since.as_second()).max(0) as u64;
    let timeout = thresholds.pending_timeout.as_secs();
    (age <= timeout).then(|| Duration::from_secs(timeout - age + 1))
}

/// The `LostRecords` finding of a release that has no record left, from its stamped objects.
pub fn lost_records(namespace: &str, release: &str, objects: Vec<FindingResource>) -> Finding {
    let names: Vec<String> = objects.iter().take(5).map(FindingResource::short).collect();
    let more = objects.len().saturating_sub(5);
    Finding {
        kind: "LostRecords".into(),
        message: format!(
            "release {release} has no Helm record left, but {} object(s) are stamped for it: {}{} (helm list shows nothing; helm install fails with \"already exists\")",
            objects.len(),
            names.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        ),
        hint: format!("helm upgrade --install {release} CHART -n {namespace} --version VERSION -f VALUES   # with the chart and values last used: Helm adopts the stamped objects and writes a new record"),
        resources: objects,
        diagnosis: None,
    }
}

/// The `ReleaseHealthy` condition: (healthy, reason, message). The reason is the most pressing
/// finding; `Stale` alone leaves the release healthy (it says so in the reason); a pending
/// revision younger than the timeout is `Pending`.
pub fn health_condition(history: Option<&ReleaseHistory>, findings: &[Finding]) -> (bool, String, String) {
    const ORDER: [&str; 6] = ["LostRecords", "StuckPending", "PartialUpgrade", "Failed", "HookOrphans", "OrphanedResources"];
    for kind in ORDER {
        if let Some(f) = findings.iter().find(|f| f.kind == kind) {
            let others = findings.iter().filter(|o| o.kind != kind).map(|o| o.kind.as_str()).collect::<Vec<_>>();
            let also = if others.is_empty() { String::new() } else { format!(" (also: {})", others.join(", ")) };
            return (false, kind.into(), format!("{}{also}", f.message));
        }
    }
    let Some(history) = history else { return (true, "Deployed".into(), String::new()) };
    let latest = history.latest();
    if latest.status.is_pending() {
        return (false, "Pending".into(), format!("revision {} is {} (Helm holds its lock)", latest.revision, latest.status));
    }
    if latest.status == ReleaseStatus::Failed {
        return (false, "Failed".into(), format!("revision {} failed", latest.revision));
    }
    if let Some(f) = findings.iter().find(|f| f.kind == "Stale") {
        return (true, "Stale".into(), f.message.clone());
    }
    (true, "Deployed".into(), format!("revision {} is {}", latest.revision, latest.status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::helm::{Driver, RecordMeta};

    fn history(statuses: &[(&str, Option<i64>)]) -> ReleaseHistory {
        ReleaseHistory {
            namespace: "shop".into(),
            name: "web".into(),
            driver: Driver::Secret,
            revisions: statuses
                .iter()
                .enumerate()
                .map(|(i, (s, at))| RecordMeta {
                    driver: Driver::Secret,
                    namespace: "shop".into(),
                    object_name: format!("sh.helm.release.v1.web.v{}", i + 1),
                    release: "web".into(),
                    revision: i as u32 + 1,
                    status: ReleaseStatus::parse(s),
                    labels: Default::default(),
                    created_at: *at,
                    modified_at: None,
                    uid: None,
                })
                .collect(),
        }
    }

    fn facts(h: &ReleaseHistory, now: i64) -> HealthFacts<'_> {
        HealthFacts {
            history: h,
            now: Timestamp::from_second(now).unwrap(),
            thresholds: Thresholds::default(),
            last_deployed: Some(Timestamp::from_second(now - 3600).unwrap()),
            partial: vec![],
            hook_orphans: vec![],
            orphans: vec![],
            diagnosis: None,
        }
    }

    fn kinds(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|f| f.kind.as_str()).collect()
    }

    fn object(kind: &str, name: &str, state: &str) -> FindingResource {
        FindingResource { api_version: "v1".into(), kind: kind.into(), namespace: Some("shop".into()), name: name.into(), state: Some(state.into()), detail: None }
    }

    #[test]
    fn a_healthy_release_has_no_findings() {
        let h = history(&[("superseded", Some(1)), ("deployed", Some(2))]);
        let f = findings(&facts(&h, 100_000));
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(health_condition(Some(&h), &f), (true, "Deployed".into(), "revision 2 is deployed".into()));
    }

    #[test]
    fn pending_is_stuck_only_after_the_timeout() {
        let now = 1_000_000;
        let fresh = history(&[("deployed", Some(now - 5000)), ("pending-upgrade", Some(now - 60))]);
        let f = findings(&facts(&fresh, now));
        assert!(f.is_empty(), "{f:?}");
        let (ok, reason, _) = health_condition(Some(&fresh), &f);
        assert_eq!((ok, reason.as_str()), (false, "Pending"));
        let stuck = history(&[("deployed", Some(now - 5000)), ("pending-upgrade", Some(now - 16 * 60))]);
        let f = findings(&facts(&stuck, now));
        assert_eq!(kinds(&f), ["StuckPending"]);
        assert!(f[0].message.contains("revision 2 has been pending-upgrade for 16m"), "{}", f[0].message);
        assert!(f[0].hint.contains("driftwatch unlock web -n shop"), "{}", f[0].hint);
        assert_eq!(health_condition(Some(&stuck), &f).1, "StuckPending");
        assert_eq!(stuck_in(&fresh, Thresholds::default(), Timestamp::from_second(now).unwrap()), Some(Duration::from_secs(15 * 60 - 60 + 1)));
        assert_eq!(stuck_in(&stuck, Thresholds::default(), Timestamp::from_second(now).unwrap()), None);
        // A record without a time cannot be judged stuck.
        let untimed = history(&[("deployed", None), ("pending-install", None)]);
        assert!(findings(&facts(&untimed, now)).is_empty());
    }

    #[test]
    fn a_failed_revision_applied_part_way_is_a_partial_upgrade() {
        let h = history(&[("deployed", Some(1)), ("failed", Some(2))]);
        let mut f = facts(&h, 100_000);
        f.partial = vec![object("ConfigMap", "web-config", "failed"), object("Deployment", "web", "reference")];
        let out = findings(&f);
        assert_eq!(kinds(&out), ["Failed", "PartialUpgrade"]);
        assert!(out[1].message.contains("1 object(s) match it, 1 still match revision 1"), "{}", out[1].message);
        assert!(out[1].hint.starts_with("helm rollback web 1 -n shop"), "{}", out[1].hint);
        assert_eq!(out[1].resources.len(), 2);
        // All applied, or none: a failure, not a partial one.
        f.partial = vec![object("ConfigMap", "web-config", "failed")];
        assert_eq!(kinds(&findings(&f)), ["Failed"]);
        f.partial = vec![object("Deployment", "web", "reference")];
        assert_eq!(kinds(&findings(&f)), ["Failed"]);
    }

    #[test]
    fn partial_states() {
        assert_eq!(partial_state(true, true, true, true), None);
        assert_eq!(partial_state(true, true, true, false), Some("failed"));
        assert_eq!(partial_state(true, true, false, true), Some("reference"));
        assert_eq!(partial_state(true, true, false, false), Some("neither"));
        assert_eq!(partial_state(true, false, false, false), Some("missing"));
        // Only in the failed revision: created or not.
        assert_eq!(partial_state(false, true, true, false), Some("failed"));
        assert_eq!(partial_state(false, false, false, false), Some("reference"));
    }

    #[test]
    fn the_diagnosis_is_on_the_failed_finding_and_in_its_message() {
        let h = history(&[("deployed", Some(1)), ("failed", Some(2))]);
        let mut f = facts(&h, 100_000);
        f.diagnosis = Some(Diagnosis { cause: "HookFailed".into(), summary: "the pre-upgrade hook Job web-migrate failed".into(), evidence: vec![], next: vec!["kubectl logs job/web-migrate -n shop".into()] });
        let out = findings(&f);
        assert!(out[0].message.contains("web-migrate failed (HookFailed); drift is reported against revision 1"), "{}", out[0].message);
        assert_eq!(out[0].hint, "driftwatch diagnose web -n shop; then kubectl logs job/web-migrate -n shop");
        assert_eq!(out[0].diagnosis.as_ref().unwrap().cause, "HookFailed");
    }

    #[test]
    fn orphans_hooks_and_staleness() {
        let h = history(&[("deployed", Some(1))]);
        let mut f = facts(&h, 100 * 86400);
        f.last_deployed = Some(Timestamp::from_second(55 * 86400).unwrap());
        f.hook_orphans = vec![object("Job", "web-migrate", "failed")];
        f.orphans = vec![object("ConfigMap", "old", "")];
        let out = findings(&f);
        assert_eq!(kinds(&out), ["HookOrphans", "OrphanedResources", "Stale"]);
        assert!(out[2].message.contains("last deployed 45d ago"), "{}", out[2].message);
        assert!(out[0].hint.contains("kubectl delete job/web-migrate -n shop"), "{}", out[0].hint);
        let (ok, reason, msg) = health_condition(Some(&h), &out);
        assert_eq!((ok, reason.as_str()), (false, "HookOrphans"));
        assert!(msg.contains("also: OrphanedResources, Stale"), "{msg}");
        // Stale alone: healthy, and the reason says it.
        let stale: Vec<Finding> = out.into_iter().filter(|f| f.kind == "Stale").collect();
        assert_eq!(health_condition(Some(&h), &stale).1, "Stale");
        assert!(health_condition(Some(&h), &stale).0);
    }

    #[test]
    fn lost_records_names_the_objects_and_the_adopting_command() {
        let f = lost_records("shop", "web", vec![object("Deployment", "web", ""), object("Service", "web", "")]);
        assert_eq!(f.kind, "LostRecords");
        assert!(f.message.contains("2 object(s) are stamped for it: Deployment/web, Service/web"), "{}", f.message);
        assert!(f.hint.starts_with("helm upgrade --install web CHART -n shop"), "{}", f.hint);
        assert_eq!(health_condition(None, std::slice::from_ref(&f)).1, "LostRecords");
    }
}
