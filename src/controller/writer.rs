//! The one writer: the only code that sends report and policy status, Events, report deletes
//! and heal actions, and the one place that drops them when this replica does not lead. Every
//! replica watches and checks; only the lease holder writes.

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, Recorder};
use kube::{Client, Resource as _};
use serde_json::{Value, json};

use super::lease::Leadership;
use crate::api::{DriftPolicy, DriftReport};
use crate::heal::Action;

pub const FIELD_MANAGER: &str = "driftwatch.io/controller";

/// A write the reconcile decided on.
pub enum Write {
    /// A report, written whole (created when it does not `exist`, else its status replaced),
    /// then `events` about it.
    Report { namespace: String, name: String, status: Value, exists: bool, events: Vec<Event> },
    DeleteReport { namespace: String, name: String, why: &'static str },
    PolicyStatus { namespace: String, name: String, status: Value },
    /// One action of a heal of a release in `namespace`.
    Heal { namespace: String, action: Action },
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Write::Report { namespace, name, exists, events, .. } => {
                let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
                write!(f, "Report({namespace}/{name}, exists: {exists}, events: {reasons:?})")
            }
            Write::DeleteReport { namespace, name, why } => write!(f, "DeleteReport({namespace}/{name}: {why})"),
            Write::PolicyStatus { namespace, name, .. } => write!(f, "PolicyStatus({namespace}/{name})"),
            Write::Heal { action: a, .. } => write!(f, "Heal({}: {:?})", a.object, a.op),
        }
    }
}

/// What became of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    Written,
    /// Not the leader: nothing was sent.
    Dropped,
}

pub struct Writer {
    client: Client,
    recorder: Recorder,
    pub leadership: Leadership,
    /// Whether the served DriftReport kind has a status subresource, once asked (see
    /// [`Writer::status_subresource`]).
    report_status: std::sync::Mutex<Option<bool>>,
}

impl Writer {
    pub fn new(client: Client, recorder: Recorder, leadership: Leadership) -> Self {
        Writer { client, recorder, leadership, report_status: std::sync::Mutex::new(None) }
    }

    /// Whether the served DriftReport kind still has a status subresource: a CRD older than
    /// this controller, as `helm upgrade` leaves it (Helm installs a chart's CRDs and never
    /// upgrades them). Then the API server drops a report's status from a create and from a
    /// patch of the object, so the status goes through the subresource: a new report takes
    /// two writes until the CRD is applied. Asked by discovery once, and again after a write
    /// found no report or no subresource (the CRD may have changed).
    async fn status_subresource(&self) -> bool {
        if let Some(known) = *self.report_status.lock().expect("report kind") {
            return known;
        }
        let has = match self.client.list_api_group_resources("driftwatch.io/v1alpha1").await {
            Ok(list) => list.resources.iter().any(|r| r.name == "driftreports/status"),
            // Assumed current; the next write asks again.
            Err(_) => return false,
        };
        if has {
            tracing::warn!("the DriftReport CRD is older than this controller (it has a status subresource): apply the chart's crds/driftwatch.io.yaml (helm upgrade does not); until then a new report takes two writes");
        }
        *self.report_status.lock().expect("report kind") = Some(has);
        has
    }

    /// Sends one write, if this replica leads for it (checked as it is sent: a shard lost
    /// while its release was checked is written for no more).
    pub async fn send(&self, w: &Write) -> Result<Sent, kube::Error> {
        let leads = match w {
            Write::Report { namespace, .. } | Write::DeleteReport { namespace, .. } | Write::Heal { namespace, .. } => self.leadership.leads_for(namespace),
            Write::PolicyStatus { .. } => self.leadership.leads(),
        };
        if !leads {
            return Ok(Sent::Dropped);
        }
        match w {
            Write::Report { namespace, name, status, exists, events } => {
                let reference = self.write_report(namespace, name, status, *exists).await?;
                for ev in events {
                    if let Err(e) = self.recorder.publish(ev, &reference).await {
                        tracing::warn!(namespace, release = name, reason = ev.reason, error = %e, "cannot publish the Event");
                    }
                }
            }
            Write::DeleteReport { namespace, name, why } => {
                let api: Api<DriftReport> = Api::namespaced(self.client.clone(), namespace);
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => tracing::info!(namespace, release = name, why, "DriftReport deleted"),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Write::PolicyStatus { namespace, name, status } => {
                let api: Api<DriftPolicy> = Api::namespaced(self.client.clone(), namespace);
                let body = json!({"apiVersion": "driftwatch.io/v1alpha1", "kind": "DriftPolicy", "status": status});
                api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body)).await?;
            }
            Write::Heal { action, .. } => crate::cluster::heal::execute(&self.client, action).await?,
        }
        Ok(Sent::Written)
    }

    /// Runs a heal's actions for a release in `namespace`, each with its error; none when this
    /// replica does not lead for it.
    pub async fn heal(&self, namespace: &str, actions: Vec<Action>) -> Vec<(Action, Result<(), crate::heal::HealFailure>)> {
        let mut out = Vec::new();
        for a in actions {
            let w = Write::Heal { namespace: namespace.to_string(), action: a };
            let result = self.send(&w).await;
            let Write::Heal { action: a, .. } = w else { unreachable!() };
            match result {
                Ok(Sent::Written) => out.push((a, Ok(()))),
                Ok(Sent::Dropped) => {}
                Err(e) => out.push((a, Err(crate::heal::HealFailure::of(&e)))),
            }
        }
        out
    }

    /// Writes a report whole, in one request. A new report is created with its status; a known
    /// one gets its status replaced (a JSON patch: what the status no longer says goes away, as
    /// it did under server-side apply). The report has no status subresource (`crds_yaml`), so
    /// the status goes with the object; under an older CRD that has one, see
    /// [`Writer::status_subresource`]. A report deleted meanwhile is created again; one made
    /// meanwhile (by a replica before a restart) gets its status replaced.
    async fn write_report(&self, ns: &str, name: &str, status: &Value, exists: bool) -> Result<k8s_openapi::api::core::v1::ObjectReference, kube::Error> {
        let resource = ApiResource::erase::<DriftReport>(&());
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &resource);
        let api = &api;
        let replace = |subresource: bool| async move {
            let patch: json_patch::Patch = serde_json::from_value(json!([{"op": "add", "path": "/status", "value": status}])).map_err(kube::Error::SerdeError)?;
            let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            let patch = Patch::<()>::Json(patch);
            if subresource { api.patch_status(name, &pp, &patch).await } else { api.patch(name, &pp, &patch).await }
        };
        let mut subresource = self.status_subresource().await;
        if exists {
            match replace(subresource).await {
                Ok(obj) => return Ok(obj.object_ref(&resource)),
                // Deleted by someone (made again below), or the kind changed under us.
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    *self.report_status.lock().expect("report kind") = None;
                    subresource = self.status_subresource().await;
                }
                Err(e) => return Err(e),
            }
        }
        let report: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "driftwatch.io/v1alpha1", "kind": "DriftReport",
            "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "driftwatch"}},
            "spec": {}, "status": status
        }))
        .map_err(kube::Error::SerdeError)?;
        match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &report).await {
            // The API server dropped the status (a status subresource): written through it.
            Ok(_) if subresource => Ok(replace(true).await?.object_ref(&resource)),
            Ok(obj) => Ok(obj.object_ref(&resource)),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(replace(subresource).await?.object_ref(&resource)),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::events::Reporter;

    /// A client whose every request fails at once (nothing listens on port 1): a write that
    /// reached it would be an error, not `Dropped`.
    fn unreachable_client() -> Client {
        let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        Client::try_from(config).unwrap()
    }

    fn writes() -> Vec<Write> {
        let target = crate::heal::Target { resource: kube::core::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()), namespace: Some("a".into()), name: "c".into() };
        vec![
            Write::Report { namespace: "a".into(), name: "r".into(), status: json!({}), exists: true, events: vec![] },
            Write::DeleteReport { namespace: "a".into(), name: "r".into(), why: "the release is gone" },
            Write::PolicyStatus { namespace: "a".into(), name: "p".into(), status: json!({}) },
            Write::Heal { namespace: "a".into(), action: Action { object: "ConfigMap/c".into(), target, op: crate::heal::Op::Apply(json!({})), paths: vec![] } },
        ]
    }

    #[tokio::test]
    async fn a_replica_that_does_not_lead_sends_nothing() {
        let client = unreachable_client();
        let recorder = Recorder::new(client.clone(), Reporter { controller: "test".into(), instance: None });
        let leadership = Leadership::new(true);
        let writer = Writer::new(client, recorder, leadership.clone());
        for w in writes() {
            assert_eq!(writer.send(&w).await.unwrap(), Sent::Dropped, "{w:?}");
        }
        let Write::Heal { action, .. } = writes().pop().unwrap() else { unreachable!() };
        assert!(writer.heal("a", vec![action.clone()]).await.is_empty(), "a heal that was not sent has no result");
        // Leading: every write is sent (and here fails, nothing listening).
        leadership.set(0, true);
        for w in writes() {
            assert!(writer.send(&w).await.is_err(), "{w:?}");
        }
        assert!(writer.heal("a", vec![action.clone()]).await[0].1.is_err());
        // Stepping down closes the gate again.
        leadership.step_down();
        assert_eq!(writer.send(&writes()[0]).await.unwrap(), Sent::Dropped);
    }

    #[tokio::test]
    async fn without_leader_election_every_replica_writes() {
        assert!(Leadership::new(false).leads());
        assert!(!Leadership::new(true).leads());
        assert!(Leadership::sharded(false, 4).leads_for("any"));
    }

    #[tokio::test]
    async fn with_shards_a_replica_writes_for_the_namespaces_of_its_shards_only() {
        use crate::controller::lease::shard_of;
        let client = unreachable_client();
        let recorder = Recorder::new(client.clone(), Reporter { controller: "test".into(), instance: None });
        let leadership = Leadership::sharded(true, 2);
        let writer = Writer::new(client, recorder, leadership.clone());
        let (zero, one) = ["a", "b", "c", "d", "e"].iter().fold((None, None), |(z, o), ns| match shard_of(ns, 2) {
            0 => (z.or(Some(*ns)), o),
            _ => (z, o.or(Some(*ns))),
        });
        let (zero, one) = (zero.unwrap(), one.unwrap());
        leadership.set(1, true);
        let report = |ns: &str| Write::Report { namespace: ns.into(), name: "r".into(), status: json!({}), exists: true, events: vec![] };
        assert_eq!(writer.send(&report(zero)).await.unwrap(), Sent::Dropped);
        assert!(writer.send(&report(one)).await.is_err(), "sent (nothing listens)");
        assert!(leadership.checks(one) && !leadership.checks(zero));
        // The policies' status is shard 0's holder's.
        assert_eq!(writer.send(&Write::PolicyStatus { namespace: one.into(), name: "p".into(), status: json!({}) }).await.unwrap(), Sent::Dropped);
        // A heal goes by the release's namespace, whatever the object's.
        let Write::Heal { action, .. } = writes().pop().unwrap() else { unreachable!() };
        assert!(writer.heal(zero, vec![action.clone()]).await.is_empty());
        assert_eq!(writer.heal(one, vec![action]).await.len(), 1);
        assert_eq!(leadership.held(), vec![1]);
        // With one shard, a standby checks everything and writes nothing.
        let single = Leadership::new(true);
        assert!(single.checks(zero) && !single.leads_for(zero));
    }
}
