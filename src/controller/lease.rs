//! Leader election with a `coordination.k8s.io/v1` Lease: every replica watches and checks,
//! only the holder writes. Optimistic concurrency (resourceVersion) settles races.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::json;

pub const LEASE_NAME: &str = "driftwatch-controller";
pub const LEASE_SECONDS: i32 = 10;
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// At most this long for one acquire or renewal: with `RENEW_EVERY`, a replica that cannot
/// renew steps down within 6 s, before its 10 s lease can pass to another.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);

/// Runs the election until `stop` is set; `leader` says whether this replica holds the lease.
/// `on_gain` is called each time the lease is won.
pub async fn run(client: Client, namespace: String, identity: String, leader: Arc<AtomicBool>, stop: Arc<AtomicBool>, on_gain: impl Fn()) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    while !stop.load(Ordering::Relaxed) {
        // A renewal that does not answer well within the lease's term counts as lost: this
        // replica steps down before another may take over (never two writers).
        let held = match tokio::time::timeout(ATTEMPT_TIMEOUT, try_acquire(&api, &identity)).await {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "leader election: lease request failed");
                false
            }
            Err(_) => {
                tracing::warn!(timeout_s = ATTEMPT_TIMEOUT.as_secs(), "leader election: lease request did not answer in time");
                false
            }
        };
        let was = leader.swap(held, Ordering::SeqCst);
        if held && !was {
            tracing::info!(identity, "became the leader");
            on_gain();
        } else if !held && was {
            tracing::warn!(identity, "lost the lease; no longer writing");
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
    if leader.swap(false, Ordering::SeqCst) {
        // Hand over at once rather than after the lease expires.
        if let Ok(mut l) = api.get(LEASE_NAME).await {
            if let Some(spec) = l.spec.as_mut() {
                spec.holder_identity = None;
                let _ = api.replace(LEASE_NAME, &PostParams::default(), &l).await;
            }
        }
    }
}

async fn try_acquire(api: &Api<Lease>, identity: &str) -> Result<bool, kube::Error> {
    let now = jiff::Timestamp::now();
    let Some(mut lease) = api.get_opt(LEASE_NAME).await? else {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": LEASE_NAME},
            "spec": {"holderIdentity": identity, "leaseDurationSeconds": LEASE_SECONDS,
                     "acquireTime": MicroTime(now), "renewTime": MicroTime(now), "leaseTransitions": 0}
        }))
        .expect("a valid Lease");
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expired = spec.renew_time.as_ref().is_none_or(|t| {
        let secs = spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS) as i64;
        t.0.as_second() + secs < now.as_second()
    });
    if holder != identity && !holder.is_empty() && !expired {
        return Ok(false);
    }
    if holder != identity {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(identity.to_string());
    spec.lease_duration_seconds = Some(LEASE_SECONDS);
    spec.renew_time = Some(MicroTime(now));
    match api.replace(LEASE_NAME, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
