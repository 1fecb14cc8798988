//! What the next `helm upgrade` or `helm rollback` does to each drifted field (issue 16): a pure
//! prediction over (the reference manifest's value, the new manifest's value, the live value, who
//! owns the live value, the apply method). `driftwatch preview upgrade|rollback` carries the
//! drift check's fields and the new manifest to it ([`crate::cli::preview`]).
//!
//! The rules, from the sources Helm and Kubernetes follow, and checked against real helm v3.22
//! and v4.3 on the local cluster (a kubectl-edit of a memory limit, a `kubectl scale`, a
//! server-side-apply hotfix with its own manager, a key added by hand, an edited custom resource;
//! then `helm upgrade` with the same chart and values; and an upgrade that drops the hotfixed key
//! and changes the edited custom resource's field):
//!
//! - **Client-side apply, built-in kinds** (Helm 3; Helm 4 with `--server-side=false`): Helm's
//!   `createPatch` (helm `pkg/kube/client.go`) calls `strategicpatch.CreateThreeWayMergePatch(
//!   original = old manifest, modified = new manifest, current = live)`
//!   (`k8s.io/apimachinery/pkg/util/strategicpatch/patch.go`). Its patch is the diff from *live*
//!   to the new manifest, changes and additions only, merged with the deletions from the old
//!   manifest to the new one. So every field the new manifest sets is put back to its value,
//!   whatever the old manifest said (`Reverted`: observed for the memory limit, the replicas and
//!   the hotfixed ConfigMap key); a field the new manifest drops is deleted (`Removed`); a field
//!   neither manifest sets (added by hand) is left (`Kept`: observed for a ConfigMap key and a
//!   Service label).
//! - **Client-side apply, custom resources** (unstructured objects): Helm 3 and Helm 4's
//!   client-side path use a two-way JSON merge patch from the old manifest to the new one
//!   (`jsonpatch.CreateMergePatch(old, new)`; the three-way variant is off by default): live is
//!   not looked at. A field both manifests set to the same value is not in the patch, so its
//!   drift survives the upgrade silently (`Kept`: observed for a Widget's `color`); one they set
//!   differently gets the new value (`Reverted`: observed); one the new manifest drops is
//!   deleted (`Removed`: observed for the hotfixed key, in Helm 3).
//! - **Server-side apply** (Helm 4's default for releases it installs; field manager `helm`):
//!   the API server's conflict rule (`k8s.io/apimachinery/pkg/util/managedfields`, "Conflicts"
//!   in the server-side apply documentation): applying a value to a field another manager owns
//!   with a different value is a conflict, and the whole upgrade fails without
//!   `--force-conflicts` (`Conflict`, naming the manager: observed for `kubectl-edit` (an Update
//!   manager), `kubectl` via `scale`, and an apply manager `hotfix`); with it, Helm takes the
//!   field over (`TakenOver`). A field only Helm owns is simply set (`Reverted`). A field Helm
//!   no longer applies is removed only when Helm alone owns it (`Removed`); another manager's
//!   stays (`Kept`: observed for the hotfixed key the new manifest dropped, with and without
//!   force), as does a field neither manifest sets.
//! - **A missing object** is created again by both methods (`Recreated`).
//! - **Fields another manager owns that have not drifted** (their live value is the reference
//!   manifest's) follow the same rules: client-side, Helm's patch sets the new manifest's value
//!   over them whoever owns them (observed for a key a `gitops` manager applied, and for
//!   replicas the autoscaler wrote through `scale` on an object Helm 3 made); server-side, a
//!   new value on a field another manager owns is a conflict (observed: the upgrade fails naming
//!   `gitops`). Which fields have an owner is Kubernetes' record
//!   (`k8s.io/apimachinery/pkg/util/managedfields`): its `ScaleHandler` maps a write through
//!   `scale` onto `/spec/replicas`, and an Update of an object whose managed fields hold no owner
//!   for the path records none (observed: `kubectl scale` and the autoscaler on a Deployment that
//!   Helm 4 applied without `replicas` leave no entry, so there is no conflict to predict, and
//!   Helm 4's upgrade setting replicas indeed succeeds).

use serde::Serialize;
use serde_json::Value;

/// How Helm will apply the new manifest to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Client-side, built-in kind: three-way strategic merge with live.
    ThreeWay,
    /// Client-side, custom resource: two-way JSON merge patch old → new.
    TwoWay,
    /// Server-side apply as manager `helm`; `force` is `--force-conflicts`.
    ServerSide { force: bool },
}

/// What happens to one drifted field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "outcome", content = "manager")]
pub enum Outcome {
    /// The new manifest's value replaces the live one: the drift is undone.
    Reverted,
    /// The live value stays: the drift survives the upgrade, silently.
    Kept,
    /// The field is deleted (the new manifest drops it).
    Removed,
    /// The object does not exist and is created again.
    Recreated,
    /// Server-side apply fails on this field, owned by this manager, without
    /// `--force-conflicts`.
    Conflict(String),
    /// With `--force-conflicts`, Helm takes the field over from this manager.
    TakenOver(String),
    /// The new manifest sets the value that is live already: the drift becomes the desired state.
    Adopted,
}

/// One drifted field, as the prediction needs it.
#[derive(Clone, Debug, Default)]
pub struct FieldFacts<'a> {
    /// The reference (old) manifest's value (None: it does not set the field).
    pub old: Option<&'a Value>,
    /// The new manifest's value (None: it does not set the field).
    pub new: Option<&'a Value>,
    /// The live value (None: absent live).
    pub live: Option<&'a Value>,
    /// The manager that owns the live value, when it is not Helm (None: Helm, or nobody recorded).
    pub foreign_manager: Option<&'a str>,
}

/// The field's outcome and its value after the upgrade (None: absent).
pub fn predict_field(f: &FieldFacts, method: Method) -> (Outcome, Option<Value>) {
    let keep = || f.live.cloned();
    match (f.new, method) {
        (Some(n), _) if f.live == Some(n) => (Outcome::Adopted, Some(n.clone())),
        (Some(n), Method::ThreeWay) => (Outcome::Reverted, Some(n.clone())),
        (Some(n), Method::TwoWay) if f.old == Some(n) => (Outcome::Kept, keep()),
        (Some(n), Method::TwoWay) => (Outcome::Reverted, Some(n.clone())),
        (Some(_), Method::ServerSide { force: false }) if f.foreign_manager.is_some() => (Outcome::Conflict(f.foreign_manager.unwrap_or_default().to_string()), keep()),
        (Some(n), Method::ServerSide { force: true }) if f.foreign_manager.is_some() => (Outcome::TakenOver(f.foreign_manager.unwrap_or_default().to_string()), Some(n.clone())),
        (Some(n), Method::ServerSide { .. }) => (Outcome::Reverted, Some(n.clone())),
        (None, _) if f.old.is_none() => (Outcome::Kept, keep()),
        (None, Method::ServerSide { .. }) if f.foreign_manager.is_some() => (Outcome::Kept, keep()),
        (None, _) => (Outcome::Removed, None),
    }
}

/// Counts of a preview, for its five-second summary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tally {
    pub reverted: usize,
    pub kept: usize,
    pub removed: usize,
    pub recreated: usize,
    pub conflicts: usize,
    pub taken_over: usize,
    pub adopted: usize,
    /// Fields another manager owns that have not drifted: those the operation changes (sets,
    /// takes over or removes), and those it leaves as they are. Their conflicts are counted in
    /// `conflicts`: they fail the operation as much as a drifted field's.
    pub owned_changed: usize,
    pub owned_unchanged: usize,
}

impl Tally {
    pub fn add(&mut self, o: &Outcome) {
        match o {
            Outcome::Reverted => self.reverted += 1,
            Outcome::Kept => self.kept += 1,
            Outcome::Removed => self.removed += 1,
            Outcome::Recreated => self.recreated += 1,
            Outcome::Conflict(_) => self.conflicts += 1,
            Outcome::TakenOver(_) => self.taken_over += 1,
            Outcome::Adopted => self.adopted += 1,
        }
    }

    /// A field another manager owns, not drifted.
    pub fn add_owned(&mut self, o: &Outcome) {
        match o {
            Outcome::Conflict(_) => self.conflicts += 1,
            Outcome::Reverted | Outcome::Removed | Outcome::TakenOver(_) => self.owned_changed += 1,
            Outcome::Kept | Outcome::Adopted | Outcome::Recreated => self.owned_unchanged += 1,
        }
    }

    /// `--detailed-exitcode`'s question: would anything be reverted, kept or conflict?
    pub fn consequential(&self) -> bool {
        self.reverted + self.kept + self.conflicts > 0
    }

    /// "this upgrade reverts 2 manual changes (kubectl-edit, 21d ago), keeps 1 change silently,
    /// and will fail on 1 conflict (with gitops)": `who` gives each part's note (empty for
    /// none) by outcome name (`reverted`, `kept`, `conflict`, `changed`, …).
    pub fn sentence(&self, what: &str, who: &dyn Fn(&str) -> String) -> String {
        let plural = |n: usize, one: &str, many: &str| if n == 1 { format!("1 {one}") } else { format!("{n} {many}") };
        let mut parts = Vec::new();
        let mut part = |n: usize, key: &str, text: String| {
            if n > 0 {
                parts.push(format!("{text}{}", who(key)));
            }
        };
        part(self.reverted, "reverted", format!("reverts {}", plural(self.reverted, "manual change", "manual changes")));
        part(self.taken_over, "takenOver", format!("takes over {}", plural(self.taken_over, "field", "fields")));
        part(self.removed, "removed", format!("removes {}", plural(self.removed, "drifted field", "drifted fields")));
        part(self.recreated, "recreated", format!("recreates {}", plural(self.recreated, "missing object", "missing objects")));
        part(self.adopted, "adopted", format!("adopts {} as desired", plural(self.adopted, "change", "changes")));
        part(self.kept, "kept", format!("keeps {} silently", plural(self.kept, "change", "changes")));
        part(self.owned_changed, "changed", format!("overwrites {} another manager owns", plural(self.owned_changed, "field", "fields")));
        part(self.conflicts, "conflict", format!("will fail on {}", plural(self.conflicts, "conflict", "conflicts")));
        match parts.len() {
            0 => format!("this {what} changes no drifted field"),
            1 => format!("this {what} {}", parts[0]),
            _ => {
                let last = parts.pop().unwrap_or_default();
                format!("this {what} {}, and {last}", parts.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f<'a>(old: Option<&'a Value>, new: Option<&'a Value>, live: Option<&'a Value>, foreign_manager: Option<&'a str>) -> FieldFacts<'a> {
        FieldFacts { old, new, live, foreign_manager }
    }

    /// The cases observed with real helm (module doc), and the rules around them.
    #[test]
    fn outcomes_as_helm_applies() {
        let (m512, m1g, one, two) = (&json!("512Mi"), &json!("1Gi"), &json!(1), &json!(2));
        let (red, blue, hello, hotfix) = (&json!("red"), &json!("blue"), &json!("hello"), &json!("hotfix"));
        let ssa = Method::ServerSide { force: false };
        let forced = Method::ServerSide { force: true };
        let cases: Vec<(&str, FieldFacts, Method, Outcome, Option<&Value>)> = vec![
            // Same chart and values (old == new), as observed.
            ("h3 memory edited", f(Some(m512), Some(m512), Some(m1g), Some("kubectl-edit")), Method::ThreeWay, Outcome::Reverted, Some(m512)),
            ("h3 scaled", f(Some(one), Some(one), Some(two), Some("kubectl")), Method::ThreeWay, Outcome::Reverted, Some(one)),
            ("h3 ssa hotfix", f(Some(hello), Some(hello), Some(hotfix), Some("hotfix")), Method::ThreeWay, Outcome::Reverted, Some(hello)),
            ("h3 key added by hand", f(None, None, Some(hotfix), Some("kubectl-edit")), Method::ThreeWay, Outcome::Kept, Some(hotfix)),
            ("h3 custom resource edited", f(Some(blue), Some(blue), Some(red), Some("kubectl-edit")), Method::TwoWay, Outcome::Kept, Some(red)),
            ("h4 ssa memory edited", f(Some(m512), Some(m512), Some(m1g), Some("kubectl-edit")), ssa, Outcome::Conflict("kubectl-edit".into()), Some(m1g)),
            ("h4 ssa scaled", f(Some(one), Some(one), Some(two), Some("kubectl")), ssa, Outcome::Conflict("kubectl".into()), Some(two)),
            ("h4 ssa custom resource", f(Some(blue), Some(blue), Some(red), Some("kubectl-edit")), ssa, Outcome::Conflict("kubectl-edit".into()), Some(red)),
            ("h4 forced", f(Some(hello), Some(hello), Some(hotfix), Some("hotfix")), forced, Outcome::TakenOver("hotfix".into()), Some(hello)),
            ("h4 key added by hand", f(None, None, Some(hotfix), Some("kubectl-edit")), forced, Outcome::Kept, Some(hotfix)),
            // The new manifest changes the field.
            ("custom resource, changed by the chart", f(Some(blue), Some(hello), Some(red), Some("kubectl-edit")), Method::TwoWay, Outcome::Reverted, Some(hello)),
            ("the chart now sets the drifted value", f(Some(one), Some(two), Some(two), Some("kubectl")), Method::ThreeWay, Outcome::Adopted, Some(two)),
            ("the chart now sets the drifted value, ssa", f(Some(one), Some(two), Some(two), Some("kubectl")), ssa, Outcome::Adopted, Some(two)),
            // The new manifest drops the field.
            ("dropped, csa", f(Some(one), None, Some(two), Some("kubectl")), Method::ThreeWay, Outcome::Removed, None),
            ("dropped, custom resource", f(Some(blue), None, Some(red), Some("kubectl-edit")), Method::TwoWay, Outcome::Removed, None),
            ("dropped, ssa, another manager owns it", f(Some(one), None, Some(two), Some("kubectl")), ssa, Outcome::Kept, Some(two)),
            ("dropped, ssa, only helm owns it", f(Some(one), None, Some(two), None), ssa, Outcome::Removed, None),
            // Removed live (no owner recorded): put back.
            ("removed live, csa", f(Some(one), Some(one), None, None), Method::ThreeWay, Outcome::Reverted, Some(one)),
            ("removed live, ssa", f(Some(one), Some(one), None, None), ssa, Outcome::Reverted, Some(one)),
        ];
        for (name, facts, method, outcome, after) in cases {
            let (o, a) = predict_field(&facts, method);
            assert_eq!((o, a.as_ref()), (outcome, after), "{name}");
        }
    }

    #[test]
    fn the_five_second_summary() {
        let mut t = Tally::default();
        assert_eq!(t.sentence("upgrade", &|_| String::new()), "this upgrade changes no drifted field");
        assert!(!t.consequential());
        for o in [Outcome::Reverted, Outcome::Reverted, Outcome::Kept, Outcome::Conflict("kubectl".into())] {
            t.add(&o);
        }
        assert_eq!(t.sentence("upgrade", &|_| String::new()), "this upgrade reverts 2 manual changes, keeps 1 change silently, and will fail on 1 conflict");
        let who = |k: &str| match k {
            "reverted" => " (kubectl-edit, 21d ago)".to_string(),
            "conflict" => " (with kubectl)".to_string(),
            _ => String::new(),
        };
        assert_eq!(t.sentence("upgrade", &who), "this upgrade reverts 2 manual changes (kubectl-edit, 21d ago), keeps 1 change silently, and will fail on 1 conflict (with kubectl)");
        assert!(t.consequential());
        let mut r = Tally::default();
        r.add(&Outcome::Recreated);
        assert_eq!(r.sentence("rollback", &|_| String::new()), "this rollback recreates 1 missing object");
        assert!(!r.consequential());
        // Fields other managers own: a conflict fails the upgrade whether or not it drifted.
        let mut o = Tally::default();
        for x in [Outcome::Reverted, Outcome::Adopted, Outcome::Kept] {
            o.add_owned(&x);
        }
        assert_eq!((o.owned_changed, o.owned_unchanged), (1, 2));
        assert_eq!(o.sentence("upgrade", &|_| String::new()), "this upgrade overwrites 1 field another manager owns");
        assert!(!o.consequential(), "no drift is reverted, kept or in conflict");
        o.add_owned(&Outcome::Conflict("gitops".into()));
        assert_eq!(o.sentence("upgrade", &|_| String::new()), "this upgrade overwrites 1 field another manager owns, and will fail on 1 conflict");
        assert!(o.consequential());
    }
}
