//! Leader election with `coordination.k8s.io/v1` Leases: every replica watches, only the holder
//! of a release's lease writes for it. Optimistic concurrency (resourceVersion) settles races.
//!
//! With one shard (the default) there is one Lease, `driftwatch-controller`, and every replica
//! checks every release (a standby keeps its verdicts warm). With `--shards S`, releases are
//! split by namespace ([`shard_of`]) and each shard has its Lease,
//! `driftwatch-shard-<k>-of-<S>`; each replica renews a membership Lease
//! `driftwatch-member-<identity>` too, and holds about its fair share of the shards
//! (`ceil(S / replicas)`, [`plan`]), so shards spread as replicas come and go.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use serde_json::json;

pub const LEASE_NAME: &str = "driftwatch-controller";
pub const LEASE_SECONDS: i32 = 10;
const SHARD_PREFIX: &str = "driftwatch-shard-";
const MEMBER_PREFIX: &str = "driftwatch-member-";
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// At most this long for one turn's requests (reading the leases, then renewing and acquiring):
/// with `RENEW_EVERY`, a replica that cannot renew stops writing within 6 s, before its 10 s
/// lease can pass to another.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);
/// A membership lease not renewed for this long is deleted (by the holder of shard 0): a
/// replica that went away without handing over, under a name no pod will have again.
const MEMBER_GONE_AFTER_MS: i64 = 3_600_000;

/// The shard of a namespace's releases: FNV-1a (32 bits) of the namespace name, modulo the
/// number of shards. Stable across builds and platforms, unlike the standard library's hasher:
/// every replica, of any version, must agree.
pub fn shard_of(namespace: &str, shards: u32) -> u32 {
    if shards <= 1 {
        return 0;
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in namespace.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h % shards
}

/// The Lease of shard `k` of `shards`. One shard keeps the name a single leader always had.
/// The layout is in the name, so replicas started with different `--shards` (during a rollout
/// that changes it) never share a lease: see [`plan`].
pub fn lease_name(k: u32, shards: u32) -> String {
    if shards <= 1 { LEASE_NAME.to_string() } else { format!("{SHARD_PREFIX}{k}-of-{shards}") }
}

/// A replica's membership Lease (a Lease name is a DNS subdomain: lowercase, at most 253).
pub fn member_name(identity: &str) -> String {
    let clean: String = identity.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect();
    let mut name = format!("{MEMBER_PREFIX}{}", clean.trim_matches(|c| c == '-' || c == '.'));
    name.truncate(253);
    name
}

/// What a lease name says: shard `k` of `S`.
fn parse_shard(name: &str) -> Option<(u32, u32)> {
    if name == LEASE_NAME {
        return Some((0, 1));
    }
    let (k, s) = name.strip_prefix(SHARD_PREFIX)?.split_once("-of-")?;
    let (k, s) = (k.parse().ok()?, s.parse().ok()?);
    (k < s && s > 1).then_some((k, s))
}

/// Which releases this replica writes for: all of them without leader election; with it, those
/// of the shards whose leases it holds (this module). One shard (the default) is the single
/// leader: it writes for every release, and shard 0's holder writes the policies' status.
#[derive(Clone, Debug)]
pub struct Leadership {
    elect: bool,
    held: Arc<Vec<AtomicBool>>,
}

impl Leadership {
    pub fn new(elect: bool) -> Self {
        Self::sharded(elect, 1)
    }

    pub fn sharded(elect: bool, shards: u32) -> Self {
        Leadership { elect, held: Arc::new((0..shards.max(1)).map(|_| AtomicBool::new(false)).collect()) }
    }

    pub fn shards(&self) -> u32 {
        self.held.len() as u32
    }

    /// Whether this replica writes what is not a release's: the policies' status (shard 0).
    pub fn leads(&self) -> bool {
        !self.elect || self.held[0].load(Ordering::SeqCst)
    }

    /// Whether this replica writes for the releases of a namespace.
    pub fn leads_for(&self, namespace: &str) -> bool {
        !self.elect || self.held[shard_of(namespace, self.shards()) as usize].load(Ordering::SeqCst)
    }

    /// Whether this replica checks the releases of a namespace: with one shard every replica
    /// does (a standby keeps its verdicts warm for a failover); with shards only the holder of
    /// the namespace's shard (the memory of the rest is what sharding saves).
    pub fn checks(&self, namespace: &str) -> bool {
        self.shards() == 1 || self.leads_for(namespace)
    }

    /// Sets whether shard `k` is held; returns whether it was.
    pub fn set(&self, k: u32, held: bool) -> bool {
        self.held[k as usize].swap(held, Ordering::SeqCst)
    }

    /// The shards held.
    pub fn held(&self) -> Vec<u32> {
        (0..self.shards()).filter(|&k| self.held[k as usize].load(Ordering::SeqCst)).collect()
    }

    pub fn step_down(&self) {
        for h in self.held.iter() {
            h.store(false, Ordering::SeqCst);
        }
    }
}

/// One Lease as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub name: String,
    pub holder: String,
    /// Last renewal, unix milliseconds.
    pub renewed_ms: Option<i64>,
    pub seconds: i64,
}

impl Seen {
    fn of(lease: &Lease) -> Option<Seen> {
        let name = lease.metadata.name.clone()?;
        if parse_shard(&name).is_none() && !name.starts_with(MEMBER_PREFIX) {
            return None;
        }
        let spec = lease.spec.clone().unwrap_or_default();
        Some(Seen {
            name,
            holder: spec.holder_identity.unwrap_or_default(),
            renewed_ms: spec.renew_time.map(|t| t.0.as_millisecond()),
            seconds: spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS) as i64,
        })
    }

    /// Held and renewed within its duration.
    fn live(&self, now_ms: i64) -> bool {
        !self.holder.is_empty() && self.renewed_ms.is_some_and(|r| r + self.seconds * 1000 >= now_ms)
    }
}

/// What a replica does with the shard leases this turn.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Held, renewed.
    pub keep: Vec<u32>,
    /// Free or expired, tried.
    pub take: Vec<u32>,
    /// Held above the fair share: written for no more, then freed for another replica.
    pub hand_over: Vec<u32>,
    /// Replicas seen (membership leases alive, this one included).
    pub members: usize,
    /// `ceil(shards / members)`.
    pub share: usize,
    /// A lease of another layout (another `--shards`) is held by another replica: nothing is
    /// taken until it is let go (two layouts would mean two writers for a release). If this
    /// replica holds leases too (both layouts took theirs in one turn, before either saw the
    /// other), the layout with fewer shards hands all of its over.
    pub other_layout: bool,
}

/// The pure decision of one turn: which of `shards` leases to keep, take and hand over, from
/// the leases in the controller's namespace. A replica keeps what it holds up to its fair share
/// (the highest-numbered above it are handed over), and takes free or expired ones, starting
/// at a place of its own (so replicas starting together ask for different ones), until it has
/// its share.
pub fn plan(me: &str, shards: u32, leases: &[Seen], now_ms: i64) -> Plan {
    let shards = shards.max(1);
    let members = if shards == 1 {
        1
    } else {
        let mut who: BTreeSet<&str> = leases.iter().filter(|l| l.name.starts_with(MEMBER_PREFIX) && l.live(now_ms)).map(|l| l.holder.as_str()).collect();
        who.insert(me);
        who.len()
    };
    let share = (shards as usize).div_ceil(members);
    let lease = |k: u32| leases.iter().find(|l| l.name == lease_name(k, shards));
    let mine: Vec<u32> = (0..shards).filter(|&k| lease(k).is_some_and(|l| l.holder == me)).collect();
    let others: Vec<u32> = leases.iter().filter(|l| l.holder != me && l.live(now_ms)).filter_map(|l| parse_shard(&l.name)).map(|(_, s)| s).filter(|&s| s != shards).collect();
    let other_layout = !others.is_empty();
    let yields = others.iter().any(|&s| s > shards);
    let (keep, hand_over) = if yields {
        (Vec::new(), mine.clone())
    } else if mine.len() > share {
        (mine[..share].to_vec(), mine[share..].to_vec())
    } else {
        (mine.clone(), Vec::new())
    };
    let mut take = Vec::new();
    if !other_layout {
        let start = shard_of(me, shards);
        for k in (0..shards).map(|i| (start + i) % shards) {
            if keep.len() + take.len() >= share {
                break;
            }
            if !mine.contains(&k) && lease(k).is_none_or(|l| !l.live(now_ms)) {
                take.push(k);
            }
        }
    }
    Plan { keep, take, hand_over, members, share, other_layout }
}

/// Runs the election until `stop` is set; `leadership` says which shards this replica holds.
/// `on_gain(k)` is called each time shard `k` is won, `on_lose(k)` each time it is lost or
/// handed over (after writing for it stopped).
pub async fn run(
    client: Client,
    namespace: String,
    identity: String,
    leadership: Leadership,
    stop: Arc<AtomicBool>,
    on_gain: impl Fn(u32),
    on_lose: impl Fn(u32),
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let shards = leadership.shards();
    // `handing_over`: the shards let go on purpose (to even out the shares), not lost.
    let apply = |held: &BTreeSet<u32>, handing_over: bool| {
        for k in 0..shards {
            let now = held.contains(&k);
            let was = leadership.set(k, now);
            let lease = lease_name(k, shards);
            if now && !was {
                tracing::info!(identity, lease, shard = k, "became the leader");
                on_gain(k);
            } else if !now && was {
                if handing_over {
                    tracing::info!(identity, lease, shard = k, "handed the shard over; no longer writing for it");
                } else {
                    tracing::warn!(identity, lease, shard = k, "lost the lease; no longer writing");
                }
                on_lose(k);
            }
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let deadline = tokio::time::Instant::now() + ATTEMPT_TIMEOUT;
        // A turn that does not answer well within the lease's term counts as lost: this replica
        // stops writing before another may take over (never two writers).
        let held = match tokio::time::timeout_at(deadline, read(&api, &identity, shards)).await {
            Ok(Ok(listed)) => {
                let now_ms = jiff::Timestamp::now().as_millisecond();
                let plan = plan(&identity, shards, &listed.seen, now_ms);
                if !plan.hand_over.is_empty() {
                    // Stop writing first, then let go.
                    let mut held: BTreeSet<u32> = leadership.held().into_iter().collect();
                    for k in &plan.hand_over {
                        held.remove(k);
                        tracing::info!(identity, shard = k, share = plan.share, replicas = plan.members, "handing a shard over to even out the replicas' shares");
                    }
                    apply(&held, true);
                }
                let tries = plan.keep.iter().chain(&plan.take).map(|&k| {
                    let api = &api;
                    let (listed, identity) = (&listed, identity.as_str());
                    async move { (k, hold(api, listed, &lease_name(k, shards), identity, now_ms).await) }
                });
                let mut held = BTreeSet::new();
                match tokio::time::timeout_at(deadline, futures::future::join_all(tries)).await {
                    Ok(results) => {
                        for (k, r) in results {
                            match r {
                                Ok(true) => {
                                    held.insert(k);
                                }
                                Ok(false) => {}
                                Err(e) => tracing::warn!(error = %e, shard = k, "leader election: lease request failed"),
                            }
                        }
                    }
                    Err(_) => tracing::warn!(timeout_s = ATTEMPT_TIMEOUT.as_secs(), "leader election: lease request did not answer in time"),
                }
                // Then, within the turn's time (a turn that overran would leave a replica
                // believing it holds leases that expired): let the handed-over shards go, and
                // forget the replicas gone for an hour.
                let frees = futures::future::join_all(plan.hand_over.iter().map(|&k| free(&api, &listed, lease_name(k, shards))));
                let gone = async {
                    if shards > 1 && held.contains(&0) {
                        forget_gone_members(&api, &listed, now_ms).await;
                    }
                };
                let _ = tokio::time::timeout_at(deadline, futures::future::join(frees, gone)).await;
                held
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "leader election: lease request failed");
                BTreeSet::new()
            }
            Err(_) => {
                tracing::warn!(timeout_s = ATTEMPT_TIMEOUT.as_secs(), "leader election: lease request did not answer in time");
                BTreeSet::new()
            }
        };
        apply(&held, false);
        tokio::time::sleep(RENEW_EVERY).await;
    }
    // Hand over at once rather than after the leases expire.
    let held = leadership.held();
    leadership.step_down();
    if let Ok(Ok(listed)) = tokio::time::timeout(ATTEMPT_TIMEOUT, read(&api, &identity, 1)).await {
        let mut names: Vec<String> = held.iter().map(|&k| lease_name(k, shards)).collect();
        if shards > 1 {
            names.push(member_name(&identity));
        }
        let frees = names.into_iter().map(|n| free(&api, &listed, n));
        let _ = tokio::time::timeout(ATTEMPT_TIMEOUT, futures::future::join_all(frees)).await;
    }
}

/// The leases of the controller's namespace that election uses (one LIST), after renewing this
/// replica's membership lease when there are shards. A membership that cannot be renewed is
/// logged: the others then count one replica fewer, which moves shards but never makes two
/// writers.
async fn read(api: &Api<Lease>, identity: &str, shards: u32) -> Result<Listed, kube::Error> {
    let (seen, leases) = api.list(&ListParams::default()).await?.items.into_iter().filter_map(|l| Some((Seen::of(&l)?, l))).unzip();
    let mut listed = Listed { seen, leases };
    if shards > 1 {
        let name = member_name(identity);
        let now = jiff::Timestamp::now().as_millisecond();
        match hold(api, &listed, &name, identity, now).await {
            Ok(true) => {
                listed.seen.retain(|s| s.name != name);
                listed.seen.push(Seen { name, holder: identity.to_string(), renewed_ms: Some(now), seconds: LEASE_SECONDS as i64 });
            }
            Ok(false) => tracing::warn!(lease = name, "leader election: the membership lease is held by another replica of the same name"),
            Err(e) => tracing::warn!(lease = name, error = %e, "leader election: cannot renew the membership lease"),
        }
    }
    Ok(listed)
}

/// The election's leases as one LIST read them: what the planner sees, and the objects (for
/// their resourceVersion: a lease changed since is a conflict).
struct Listed {
    seen: Vec<Seen>,
    leases: Vec<Lease>,
}

impl Listed {
    fn lease(&self, name: &str) -> Option<Lease> {
        self.leases.iter().find(|l| l.metadata.name.as_deref() == Some(name)).cloned()
    }
}

/// Renews (or takes, when free or expired) the lease `name` as `identity`, from what the turn
/// read: a lease changed since is a conflict (409) and not held.
async fn hold(api: &Api<Lease>, listed: &Listed, name: &str, identity: &str, now_ms: i64) -> Result<bool, kube::Error> {
    let now = MicroTime(jiff::Timestamp::from_millisecond(now_ms).unwrap_or_else(|_| jiff::Timestamp::now()));
    let Some(mut lease) = listed.lease(name) else {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "driftwatch"}},
            "spec": {"holderIdentity": identity, "leaseDurationSeconds": LEASE_SECONDS,
                     "acquireTime": now, "renewTime": now, "leaseTransitions": 0}
        }))
        .expect("a valid Lease");
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let current = Seen::of(&lease);
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder != identity && current.is_some_and(|c| c.live(now_ms)) {
        return Ok(false);
    }
    if holder != identity {
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(identity.to_string());
    spec.lease_duration_seconds = Some(LEASE_SECONDS);
    spec.renew_time = Some(now);
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Lets a lease go (no holder), as it was listed.
async fn free(api: &Api<Lease>, listed: &Listed, name: String) {
    if let Some(mut l) = listed.lease(&name) {
        if let Some(spec) = l.spec.as_mut() {
            spec.holder_identity = None;
            let _ = api.replace(&name, &PostParams::default(), &l).await;
        }
    }
}

/// Deletes membership leases of replicas gone for an hour (pods' names are not reused).
async fn forget_gone_members(api: &Api<Lease>, listed: &Listed, now_ms: i64) {
    for s in listed.seen.iter().filter(|s| s.name.starts_with(MEMBER_PREFIX) && s.renewed_ms.is_none_or(|r| r + MEMBER_GONE_AFTER_MS < now_ms)) {
        let _ = api.delete(&s.name, &DeleteParams::default()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000_000;

    fn shard(k: u32, of: u32, holder: &str, age_s: i64) -> Seen {
        Seen { name: lease_name(k, of), holder: holder.into(), renewed_ms: Some(NOW - age_s * 1000), seconds: 10 }
    }

    fn member(who: &str, age_s: i64) -> Seen {
        Seen { name: member_name(who), holder: who.into(), renewed_ms: Some(NOW - age_s * 1000), seconds: 10 }
    }

    #[test]
    fn a_namespace_s_shard_is_fnv1a_of_its_name() {
        // FNV-1a 32 of "" is the offset basis; of "a" is 0xe40c292c (the published test vectors).
        assert_eq!(shard_of("", u32::MAX), 0x811c_9dc5);
        assert_eq!(shard_of("a", u32::MAX), 0xe40c_292c);
        assert_eq!(shard_of("anything", 1), 0);
        let spread: BTreeSet<u32> = (0..64).map(|i| shard_of(&format!("team-{i}"), 4)).collect();
        assert_eq!(spread.len(), 4, "64 namespaces land on every one of 4 shards");
    }

    #[test]
    fn lease_names_carry_the_layout() {
        assert_eq!(lease_name(0, 1), "driftwatch-controller");
        assert_eq!(lease_name(3, 8), "driftwatch-shard-3-of-8");
        assert_eq!(parse_shard("driftwatch-shard-3-of-8"), Some((3, 8)));
        assert_eq!(parse_shard("driftwatch-controller"), Some((0, 1)));
        assert_eq!(parse_shard("driftwatch-shard-8-of-8"), None);
        assert_eq!(parse_shard("kube-scheduler"), None);
        assert_eq!(member_name("Driftwatch_7f9c-x"), "driftwatch-member-driftwatch-7f9c-x");
    }

    #[test]
    fn one_shard_is_one_leader() {
        // Free: taken, however many replicas there are.
        assert_eq!(plan("a", 1, &[], NOW).take, vec![0]);
        assert_eq!(plan("a", 1, &[member("b", 0)], NOW).take, vec![0]);
        // Held by another, renewed: nothing. Expired: taken.
        assert_eq!(plan("a", 1, &[shard(0, 1, "b", 3)], NOW), Plan { members: 1, share: 1, ..Plan::default() });
        assert_eq!(plan("a", 1, &[shard(0, 1, "b", 11)], NOW).take, vec![0]);
        // Mine: kept.
        assert_eq!(plan("a", 1, &[shard(0, 1, "a", 3)], NOW).keep, vec![0]);
        // Let go (no holder): taken.
        assert_eq!(plan("a", 1, &[shard(0, 1, "", 3)], NOW).take, vec![0]);
    }

    #[test]
    fn a_lone_replica_takes_every_shard() {
        let p = plan("a", 4, &[member("a", 0)], NOW);
        assert_eq!((p.members, p.share, p.keep.len() + p.take.len()), (1, 4, 4));
        let mut all = p.take.clone();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_second_replica_gets_half_and_the_first_hands_half_over() {
        let leases = [member("a", 1), member("b", 0), shard(0, 2, "a", 1), shard(1, 2, "a", 1)];
        let a = plan("a", 2, &leases, NOW);
        assert_eq!((a.keep, a.hand_over, a.take, a.share), (vec![0], vec![1], vec![], 1));
        // b takes nothing while a still holds both, renewed.
        let b = plan("b", 2, &leases, NOW);
        assert!(b.take.is_empty() && b.keep.is_empty());
        // Once a let shard 1 go, b takes it.
        let leases = [member("a", 1), member("b", 0), shard(0, 2, "a", 1), shard(1, 2, "", 1)];
        assert_eq!(plan("b", 2, &leases, NOW).take, vec![1]);
    }

    #[test]
    fn a_replica_that_is_gone_leaves_its_shards_to_the_others_when_they_expire() {
        // b's membership and its shard expired: a's share is both, and it takes shard 1.
        let leases = [member("a", 0), member("b", 30), shard(0, 2, "a", 1), shard(1, 2, "b", 30)];
        let a = plan("a", 2, &leases, NOW);
        assert_eq!((a.members, a.keep, a.take), (1, vec![0], vec![1]));
        // Not while b's lease is still within its term, even with b's membership gone.
        let leases = [member("a", 0), shard(0, 2, "a", 1), shard(1, 2, "b", 5)];
        assert_eq!(plan("a", 2, &leases, NOW).take, Vec::<u32>::new());
    }

    #[test]
    fn shares_are_fair_rounding_up() {
        let members: Vec<Seen> = ["a", "b", "c"].iter().map(|m| member(m, 0)).collect();
        let p = plan("a", 8, &members, NOW);
        assert_eq!((p.members, p.share, p.take.len()), (3, 3, 3));
        // Holding five of eight with three replicas: two handed over, the highest.
        let mut leases = members.clone();
        leases.extend((0..5).map(|k| shard(k, 8, "a", 1)));
        let p = plan("a", 8, &leases, NOW);
        assert_eq!((p.keep, p.hand_over), (vec![0, 1, 2], vec![3, 4]));
    }

    #[test]
    fn another_layout_s_live_lease_blocks_taking() {
        // A rollout from one shard to two: while the old leader holds its lease, the new
        // replicas take nothing.
        let leases = [shard(0, 1, "old", 2)];
        let p = plan("new", 2, &leases, NOW);
        assert!(p.other_layout && p.take.is_empty());
        // And the reverse.
        assert!(plan("old", 1, &[shard(1, 2, "new", 2)], NOW).take.is_empty());
        // Once it expired (or was let go), they do.
        assert_eq!(plan("new", 2, &[shard(0, 1, "old", 30)], NOW).take.len(), 2);
        assert_eq!(plan("new", 2, &[shard(0, 1, "", 2)], NOW).take.len(), 2);
        // Both layouts took leases in one turn: the one with fewer shards hands all of its
        // over, the other keeps what it holds.
        let both = [shard(0, 1, "old", 1), shard(1, 2, "new", 1)];
        let old = plan("old", 1, &both, NOW);
        assert_eq!((old.keep, old.hand_over, old.take), (vec![], vec![0], vec![]));
        let new = plan("new", 2, &both, NOW);
        assert_eq!((new.keep, new.hand_over, new.take), (vec![1], vec![], vec![]));
    }
}
