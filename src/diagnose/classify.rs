//! The cause of a failed or stuck revision, from its evidence. The order is the one an
//! engineer reads it in: what Helm said (the revision's description), then the hooks it ran,
//! then what the objects' controllers said (Events) and what the pods show.

use std::fmt;

use super::{EventLine, Evidence};
use crate::helm::ReleaseStatus;
use crate::report::Diagnosis;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    HookFailed,
    HookTimeout,
    ResourceAlreadyExists,
    ImagePull,
    CrashLoop,
    Unschedulable,
    QuotaExceeded,
    AdmissionDenied,
    Timeout,
    Unknown,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cause::HookFailed => "HookFailed",
            Cause::HookTimeout => "HookTimeout",
            Cause::ResourceAlreadyExists => "ResourceAlreadyExists",
            Cause::ImagePull => "ImagePull",
            Cause::CrashLoop => "CrashLoop",
            Cause::Unschedulable => "Unschedulable",
            Cause::QuotaExceeded => "QuotaExceeded",
            Cause::AdmissionDenied => "AdmissionDenied",
            Cause::Timeout => "Timeout",
            Cause::Unknown => "Unknown",
        })
    }
}

/// Warnings about the node's set-up, not about the release (a kubelet without cluster DNS).
const NOISE: [&str; 2] = ["MissingClusterDNS", "DNSConfigForming"];

const IMAGE_PULL: [&str; 4] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"];

fn has(text: &str, any: &[&str]) -> bool {
    let t = text.to_ascii_lowercase();
    any.iter().any(|w| t.contains(w))
}

fn timed_out(text: &str) -> bool {
    has(text, &["timed out", "deadline exceeded", "timeout"])
}

fn denied(text: &str) -> bool {
    has(text, &["denied request", "denied the request", "admission webhook", "validatingadmissionpolicy"])
}

fn quota(text: &str) -> bool {
    has(text, &["exceeded quota", "must specify limits", "must specify requests"])
}

/// `Kind "name"` or `kinds.group "name"` in an API error, as Helm quotes it.
fn quoted_object(text: &str) -> Option<String> {
    let re = regex::Regex::new(r#"([A-Za-z][A-Za-z0-9.]*) "([^"]+)""#).expect("regex");
    re.captures_iter(text)
        .find(|c| !matches!(&c[1], "Upgrade" | "Install" | "Rollback" | "release" | "Release"))
        .map(|c| format!("{} {}", &c[1], &c[2]))
}

struct Builder<'a> {
    e: &'a Evidence,
    evidence: Vec<String>,
    next: Vec<String>,
}

impl Builder<'_> {
    fn description(&mut self) {
        if !self.e.description.is_empty() {
            self.evidence.push(format!("revision {} ({}): {}", self.e.revision, self.e.status, self.e.description));
        }
    }

    fn events(&mut self, pick: impl Fn(&EventLine) -> bool) {
        let picked: Vec<String> = self.e.events.iter().filter(|e| !NOISE.contains(&e.reason.as_str()) && pick(e)).map(EventLine::line).collect();
        // The newest few: an Event repeats (its count says how often).
        let skip = picked.len().saturating_sub(5);
        self.evidence.extend(picked.into_iter().skip(skip));
    }

    fn done(self, cause: Cause, summary: String) -> Diagnosis {
        let e = self.e;
        let (r, n) = (&e.release, &e.namespace);
        let mut next = self.next;
        next.push(format!("kubectl get events -n {n} --sort-by=.lastTimestamp"));
        next.push(format!("helm history {r} -n {n}"));
        next.push(format!("helm get manifest {r} -n {n} --revision {}", e.revision));
        match (e.status.is_pending(), e.reference) {
            (true, _) => next.push(format!("driftwatch unlock {r} -n {n}   # once nothing runs it: marks revision {} failed so Helm can upgrade again", e.revision)),
            (false, Some(good)) => next.push(format!("helm rollback {r} {good} -n {n}   # back to the last deployed revision, or fix the cause and helm upgrade again")),
            (false, None) => next.push(format!("helm uninstall {r} -n {n}   # nothing was ever deployed; or fix the cause and helm upgrade --install again")),
        }
        next.dedup();
        Diagnosis { cause: cause.to_string(), summary, evidence: self.evidence, next }
    }
}

/// Classifies a failed or stuck revision. Always returns a diagnosis; `Unknown` keeps the
/// evidence that was looked at.
pub fn classify(e: &Evidence) -> Diagnosis {
    let mut b = Builder { e, evidence: Vec::new(), next: Vec::new() };
    let (r, n) = (&e.release, &e.namespace);
    let desc = e.description.as_str();

    // 1. What Helm itself recorded.
    if has(desc, &["already exists", "exists and cannot be imported"]) {
        b.description();
        let object = quoted_object(desc);
        let what = object.clone().unwrap_or_else(|| "an object of the release".into());
        if let Some(o) = &object {
            b.next.push(format!("kubectl get {} -n {n} -o yaml   # who made it (metadata.managedFields, labels)", o.replace(' ', "/").replace('"', "")));
            b.next.push(format!(
                "kubectl annotate {} -n {n} meta.helm.sh/release-name={r} meta.helm.sh/release-namespace={n} && kubectl label {} -n {n} app.kubernetes.io/managed-by=Helm   # to let Helm adopt it; or delete it",
                o.replace(' ', "/"),
                o.replace(' ', "/")
            ));
        }
        return b.done(Cause::ResourceAlreadyExists, format!("{what} already exists and is not Helm's: Helm would not take it over"));
    }
    if denied(desc) {
        b.description();
        b.events(|ev| denied(&ev.message));
        return b.done(Cause::AdmissionDenied, format!("an admission policy or webhook denied an object of revision {}", e.revision));
    }
    if quota(desc) {
        b.description();
        b.next.push(format!("kubectl describe resourcequota -n {n}"));
        return b.done(Cause::QuotaExceeded, format!("revision {} exceeds the namespace's ResourceQuota", e.revision));
    }

    // 2. The hooks it ran.
    let failed_hooks: Vec<_> = e.hooks.iter().filter(|h| h.present && h.failed.is_some()).collect();
    let running_hooks: Vec<_> = e.hooks.iter().filter(|h| h.present && h.running).collect();
    let desc_hook = has(desc, &["hook"]);
    if !failed_hooks.is_empty() && !(timed_out(desc) && !running_hooks.is_empty()) {
        b.description();
        for h in &failed_hooks {
            b.evidence.push(format!("{} {} ({} hook): {}", h.kind, h.name, h.events.join(","), h.failed.as_deref().unwrap_or_default()));
            b.next.push(format!("kubectl logs {}/{} -n {n} --all-containers", h.kind.to_lowercase(), h.name));
            b.next.push(format!("kubectl describe {}/{} -n {n}", h.kind.to_lowercase(), h.name));
        }
        let names: Vec<String> = failed_hooks.iter().map(|h| format!("{} {}", h.kind, h.name)).collect();
        b.events(|ev| failed_hooks.iter().any(|h| ev.object.ends_with(&format!("/{}", h.name)) || ev.message.contains(&h.name)));
        return b.done(Cause::HookFailed, format!("the {} hook {} failed", failed_hooks[0].events.join(","), names.join(", ")));
    }
    if (desc_hook && timed_out(desc)) || (!running_hooks.is_empty() && (timed_out(desc) || e.status.is_pending())) {
        b.description();
        for h in &running_hooks {
            b.evidence.push(format!("{} {} ({} hook) is still running", h.kind, h.name, h.events.join(",")));
            b.next.push(format!("kubectl logs {}/{} -n {n} --all-containers", h.kind.to_lowercase(), h.name));
        }
        let names: Vec<String> = running_hooks.iter().map(|h| format!("{} {}", h.kind, h.name)).collect();
        let what = if names.is_empty() { "a hook".to_string() } else { names.join(", ") };
        return b.done(Cause::HookTimeout, format!("{what} did not complete within Helm's --timeout"));
    }
    if desc_hook && has(desc, &["failed", "error"]) {
        b.description();
        return b.done(Cause::HookFailed, "a hook failed (its object is gone: see the description)".into());
    }

    // 3. Events and pods of the workloads.
    let quota_events: Vec<&EventLine> = e.events.iter().filter(|ev| quota(&ev.message)).collect();
    if !quota_events.is_empty() {
        b.description();
        b.events(|ev| quota(&ev.message));
        b.next.push(format!("kubectl describe resourcequota -n {n}"));
        return b.done(Cause::QuotaExceeded, format!("{} could not create pods: the namespace's ResourceQuota is exceeded", quota_events[0].object));
    }
    if let Some(ev) = e.events.iter().find(|ev| denied(&ev.message)) {
        b.description();
        b.events(|ev| denied(&ev.message));
        return b.done(Cause::AdmissionDenied, format!("an admission policy or webhook denied what {} creates", ev.object));
    }
    let waiting = |reasons: &[&str]| {
        e.pods.iter().flat_map(|p| p.containers.iter().map(move |c| (p, c))).filter(|(_, c)| c.waiting.as_ref().is_some_and(|(r, _)| reasons.contains(&r.as_str()))).collect::<Vec<_>>()
    };
    let pulls = waiting(&IMAGE_PULL);
    if !pulls.is_empty() || e.events.iter().any(|ev| has(&ev.message, &["errimagepull", "failed to pull image", "imagepullbackoff"])) {
        b.description();
        for (p, c) in pulls.iter().take(3) {
            let (reason, msg) = c.waiting.clone().unwrap_or_default();
            b.evidence.push(format!("pod {} container {} (image {}): {reason}: {msg}", p.name, c.name, c.image));
        }
        b.events(|ev| has(&ev.message, &["errimagepull", "failed to pull image", "imagepullbackoff", "back-off pulling image"]));
        if let Some((p, _)) = pulls.first() {
            b.next.push(format!("kubectl describe pod {} -n {n}", p.name));
        }
        let what = pulls.first().map_or_else(|| "an image".to_string(), |(p, c)| format!("image {} (pod {})", c.image, p.name));
        return b.done(Cause::ImagePull, format!("{what} cannot be pulled"));
    }
    let crashing: Vec<_> = e
        .pods
        .iter()
        .flat_map(|p| p.containers.iter().map(move |c| (p, c)))
        .filter(|(_, c)| c.waiting.as_ref().is_some_and(|(r, _)| r == "CrashLoopBackOff") || (c.restarts > 0 && c.terminated.as_ref().is_some_and(|(_, code)| *code != 0)))
        .collect();
    if !crashing.is_empty() || e.events.iter().any(|ev| ev.reason == "BackOff" && has(&ev.message, &["restarting failed container"])) {
        b.description();
        for (p, c) in crashing.iter().take(3) {
            let last = c.terminated.as_ref().map(|(r, code)| format!(", last exit {code} ({r})")).unwrap_or_default();
            b.evidence.push(format!("pod {} container {}: restarted {} times{last}", p.name, c.name, c.restarts));
        }
        b.events(|ev| ev.reason == "BackOff" && has(&ev.message, &["restarting failed container"]));
        if let Some((p, c)) = crashing.first() {
            b.next.push(format!("kubectl logs {} -n {n} -c {} --previous", p.name, c.name));
            b.next.push(format!("kubectl describe pod {} -n {n}", p.name));
        }
        let what = crashing.first().map_or_else(|| "a container".to_string(), |(p, c)| format!("container {} of pod {}", c.name, p.name));
        return b.done(Cause::CrashLoop, format!("{what} keeps exiting (CrashLoopBackOff)"));
    }
    let unschedulable: Vec<_> = e.pods.iter().filter(|p| p.unschedulable.is_some()).collect();
    if !unschedulable.is_empty() || e.events.iter().any(|ev| ev.reason == "FailedScheduling") {
        b.description();
        for p in unschedulable.iter().take(3) {
            b.evidence.push(format!("pod {}: {}", p.name, p.unschedulable.as_deref().unwrap_or_default()));
        }
        b.events(|ev| ev.reason == "FailedScheduling");
        if let Some(p) = unschedulable.first() {
            b.next.push(format!("kubectl describe pod {} -n {n}", p.name));
        }
        b.next.push("kubectl describe nodes   # allocatable vs requested, taints".into());
        return b.done(Cause::Unschedulable, format!("{} pod(s) cannot be scheduled", unschedulable.len().max(1)));
    }

    // 4. Helm gave up waiting, on nothing the cluster explains.
    if timed_out(desc) {
        b.description();
        b.events(|ev| ev.type_ == "Warning");
        return b.done(Cause::Timeout, format!("Helm's --timeout expired before revision {}'s resources were ready", e.revision));
    }
    b.description();
    b.events(|ev| ev.type_ == "Warning");
    let summary = if e.status.is_pending() {
        format!("revision {} is still {}: the Helm client that started it stopped (killed, lost its connection) before recording a result", e.revision, e.status)
    } else if e.status == ReleaseStatus::Failed {
        format!("revision {} failed for a reason the cluster does not show; read Helm's description", e.revision)
    } else {
        format!("revision {} is {}", e.revision, e.status)
    };
    let _ = r;
    b.done(Cause::Unknown, summary)
}

/// An object of a rendered manifest that exists live and is not stamped for the release being
/// installed: Helm refuses to take it over ("exists and cannot be imported into the current
/// release: invalid ownership metadata").
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    pub object: crate::report::FindingResource,
    /// The release its stamps name, when another release's (`namespace/name`).
    pub owner: Option<String>,
    /// The field managers of the live object (who made it).
    pub managers: Vec<String>,
}

/// `ResourceAlreadyExists` from the objects a rendered manifest would create over existing,
/// foreign ones (`diagnose -f`): what Helm refuses before it writes any record.
pub fn already_exists(release: &str, namespace: &str, conflicts: &[Conflict]) -> Option<Diagnosis> {
    let first = conflicts.first()?;
    let evidence = conflicts
        .iter()
        .map(|c| {
            let who = match (&c.owner, c.managers.is_empty()) {
                (Some(o), _) => format!("stamped for release {o}"),
                (None, false) => format!("not stamped by Helm; made by {}", c.managers.join(", ")),
                (None, true) => "not stamped by Helm".to_string(),
            };
            format!("{} {} exists: {who}", c.object.kind, c.object.name)
        })
        .collect();
    let mut next = Vec::new();
    for c in conflicts.iter().take(3) {
        let o = format!("{}/{}", c.object.kind.to_lowercase(), c.object.name);
        let ns = c.object.namespace.as_deref().map(|n| format!(" -n {n}")).unwrap_or_default();
        next.push(format!("kubectl get {o}{ns} -o yaml   # who made it and what it holds"));
        if c.owner.is_none() {
            next.push(format!(
                "kubectl annotate {o}{ns} meta.helm.sh/release-name={release} meta.helm.sh/release-namespace={namespace} && kubectl label {o}{ns} app.kubernetes.io/managed-by=Helm   # lets Helm adopt it (or delete it, or rename it in the chart)"
            ));
        }
    }
    next.push(format!("helm upgrade --install {release} CHART -n {namespace}   # again, once it can be adopted"));
    let names: Vec<String> = conflicts.iter().map(|c| format!("{} {}", c.object.kind, c.object.name)).collect();
    Some(Diagnosis {
        cause: Cause::ResourceAlreadyExists.to_string(),
        summary: format!(
            "{} already exist{} and {} not Helm's for release {release}: Helm will not take {} over",
            names.join(", "),
            if names.len() == 1 { "s" } else { "" },
            if names.len() == 1 { "is" } else { "are" },
            if names.len() == 1 { "it" } else { "them" },
        ),
        evidence,
        next,
    })
    .filter(|_| !first.object.name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{ContainerState, HookState, PodState};

    fn failed(desc: &str) -> Evidence {
        Evidence {
            release: "web".into(),
            namespace: "shop".into(),
            revision: 3,
            status: ReleaseStatus::Failed,
            description: desc.into(),
            reference: Some(2),
            ..Default::default()
        }
    }

    fn warning(reason: &str, object: &str, message: &str) -> EventLine {
        EventLine { time: None, type_: "Warning".into(), reason: reason.into(), object: object.into(), message: message.into(), count: 1 }
    }

    fn pod(container: ContainerState) -> PodState {
        PodState { name: "web-abc".into(), phase: "Pending".into(), containers: vec![container], unschedulable: None }
    }

    #[test]
    fn causes_from_real_descriptions_events_and_pods() {
        let hook = |failed: Option<&str>, running: bool| HookState {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: "web-migrate".into(),
            events: vec!["pre-upgrade".into()],
            phase: "Failed".into(),
            present: true,
            failed: failed.map(str::to_string),
            running,
        };
        let cases: Vec<(&str, Evidence, Cause, &str)> = vec![
            (
                "helm 3 hook failure",
                Evidence { hooks: vec![hook(Some("BackoffLimitExceeded: Job has reached the specified backoff limit"), false)], ..failed("Upgrade \"web\" failed: pre-upgrade hooks failed: 1 error occurred:\n\t* job web-migrate failed: BackoffLimitExceeded") },
                Cause::HookFailed,
                "Job web-migrate",
            ),
            ("hook failure, job gone", failed("pre-upgrade hooks failed: job failed: BackoffLimitExceeded"), Cause::HookFailed, "hook"),
            (
                "hook that never completes",
                Evidence { hooks: vec![hook(None, true)], ..failed("Upgrade \"web\" failed: pre-upgrade hooks failed: timed out waiting for the condition") },
                Cause::HookTimeout,
                "Job web-migrate",
            ),
            (
                "helm 4 hook timeout",
                Evidence { hooks: vec![hook(None, true)], ..failed("Upgrade \"web\" failed: failed pre-upgrade: resource Job/shop/web-migrate not ready. status: InProgress: context deadline exceeded") },
                Cause::HookTimeout,
                "web-migrate",
            ),
            (
                "an object that exists",
                failed("Unable to continue with install: ConfigMap \"web-config\" in namespace \"shop\" exists and cannot be imported into the current release: invalid ownership metadata"),
                Cause::ResourceAlreadyExists,
                "ConfigMap web-config",
            ),
            (
                "validating admission policy",
                failed("Upgrade \"web\" failed: cannot patch \"web\" with kind Deployment: deployments.apps \"web\" is forbidden: ValidatingAdmissionPolicy 'no-latest' with binding 'no-latest' denied request: images must be pinned"),
                Cause::AdmissionDenied,
                "denied",
            ),
            ("quota in the description", failed("Upgrade \"web\" failed: pods \"x\" is forbidden: exceeded quota: compute, requested: cpu=2"), Cause::QuotaExceeded, "ResourceQuota"),
            (
                "quota from the replica set",
                Evidence { events: vec![warning("FailedCreate", "ReplicaSet/web-7d9", "Error creating: pods \"web-7d9-x\" is forbidden: exceeded quota: compute, requested: limits.cpu=4")], ..failed("Upgrade \"web\" failed: context deadline exceeded") },
                Cause::QuotaExceeded,
                "ReplicaSet/web-7d9",
            ),
            (
                "image pull",
                Evidence {
                    pods: vec![pod(ContainerState { name: "web".into(), image: "127.0.0.1:5999/app:2".into(), waiting: Some(("ImagePullBackOff".into(), "Back-off pulling image".into())), terminated: None, restarts: 0 })],
                    ..failed("Upgrade \"web\" failed: context deadline exceeded")
                },
                Cause::ImagePull,
                "127.0.0.1:5999/app:2",
            ),
            (
                "crash loop",
                Evidence {
                    pods: vec![pod(ContainerState { name: "web".into(), image: "app:1".into(), waiting: Some(("CrashLoopBackOff".into(), "back-off 20s".into())), terminated: Some(("Error".into(), 1)), restarts: 3 })],
                    ..failed("Upgrade \"web\" failed: context deadline exceeded")
                },
                Cause::CrashLoop,
                "container web of pod web-abc",
            ),
            (
                "unschedulable",
                Evidence { pods: vec![PodState { unschedulable: Some("Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.".into()), ..pod(ContainerState::default()) }], ..failed("timed out waiting for the condition") },
                Cause::Unschedulable,
                "cannot be scheduled",
            ),
            ("plain timeout", failed("Upgrade \"web\" failed: context deadline exceeded"), Cause::Timeout, "--timeout"),
            ("unknown", failed("Upgrade \"web\" failed: something odd"), Cause::Unknown, "does not show"),
        ];
        for (name, e, cause, says) in cases {
            let d = classify(&e);
            assert_eq!(d.cause, cause.to_string(), "{name}: {d:?}");
            assert!(d.summary.contains(says), "{name}: {:?} does not say {says:?}", d.summary);
            assert!(d.next.iter().any(|c| c.starts_with("helm rollback web 2 -n shop")), "{name}: {:?}", d.next);
            if !e.description.is_empty() {
                assert!(d.evidence.iter().any(|l| l.contains(&e.description)), "{name}: the description is evidence: {:?}", d.evidence);
            }
        }
    }

    #[test]
    fn a_hook_that_failed_says_its_condition_and_the_commands_name_it() {
        let e = Evidence {
            hooks: vec![HookState { api_version: "batch/v1".into(), kind: "Job".into(), name: "web-migrate".into(), events: vec!["pre-upgrade".into()], phase: "Failed".into(), present: true, failed: Some("BackoffLimitExceeded: Job has reached the specified backoff limit".into()), running: false }],
            ..failed("pre-upgrade hooks failed")
        };
        let d = classify(&e);
        assert!(d.evidence.iter().any(|l| l.contains("Job web-migrate (pre-upgrade hook): BackoffLimitExceeded")), "{:?}", d.evidence);
        assert!(d.next.contains(&"kubectl logs job/web-migrate -n shop --all-containers".to_string()), "{:?}", d.next);
    }

    #[test]
    fn a_stuck_pending_revision_points_at_unlock() {
        let e = Evidence { status: ReleaseStatus::PendingUpgrade, description: "Preparing upgrade".into(), ..failed("") };
        let d = classify(&e);
        assert_eq!(d.cause, "Unknown");
        assert!(d.summary.contains("stopped"), "{}", d.summary);
        assert!(d.next.iter().any(|c| c.starts_with("driftwatch unlock web -n shop")), "{:?}", d.next);
    }

    #[test]
    fn existing_objects_of_a_rendered_manifest() {
        assert_eq!(already_exists("app", "shop", &[]), None);
        let object = crate::report::FindingResource { api_version: "v1".into(), kind: "ConfigMap".into(), namespace: Some("shop".into()), name: "app-config".into(), state: None, detail: None };
        let d = already_exists("app", "shop", &[Conflict { object, owner: None, managers: vec!["kubectl-create".into()] }]).unwrap();
        assert_eq!(d.cause, "ResourceAlreadyExists");
        assert_eq!(d.summary, "ConfigMap app-config already exists and is not Helm's for release app: Helm will not take it over");
        assert_eq!(d.evidence, ["ConfigMap app-config exists: not stamped by Helm; made by kubectl-create"]);
        assert!(d.next[1].starts_with("kubectl annotate configmap/app-config -n shop meta.helm.sh/release-name=app"), "{:?}", d.next);
    }

    #[test]
    fn the_quoted_object_skips_the_release() {
        assert_eq!(quoted_object("Upgrade \"web\" failed: Service \"web\" exists").as_deref(), Some("Service web"));
        assert_eq!(quoted_object("no quotes"), None);
    }
}
