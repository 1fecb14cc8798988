//! What each watch does with a change: update the index (or the policies) and queue what the
//! index says to re-check. One handler per watched type, all driven by [`super::watch::drive`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kube::Api;
use kube::api::{DynamicObject, ObjectMeta};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;

use super::index::{KindKey, Tally, helm_object};
use super::policy::{CompiledPolicy, policy_key};
use super::watch::{Change, drive};
use super::{Controller, Work};
use crate::api::{DriftPolicy, DriftReport};
use crate::helm::{Driver, RecordMeta};

impl Controller {
    /// DriftPolicies: compiled once per change; a spec change re-checks everything the policy
    /// may select. `ready` is set once they are listed. One watch over the cluster, or with
    /// watched namespaces (a namespaced install has no cluster-wide read) one per namespace a
    /// policy may come from: the cluster-policy namespaces and the watched ones.
    pub(super) async fn watch_policies(self: Arc<Self>, ready: Arc<AtomicBool>) {
        let scopes: Vec<Option<String>> = if self.settings.watch_namespaces.is_empty() {
            vec![None]
        } else {
            let mut namespaces: Vec<String> = self.settings.tenancy.cluster_policy_namespaces.iter().chain(&self.settings.watch_namespaces).cloned().collect();
            namespaces.sort();
            namespaces.dedup();
            namespaces.into_iter().map(Some).collect()
        };
        let unlisted = Arc::new(std::sync::atomic::AtomicUsize::new(scopes.len()));
        let watches = scopes.into_iter().map(|scope| Arc::clone(&self).watch_policies_in(scope, ready.clone(), unlisted.clone()));
        futures::future::join_all(watches).await;
    }

    async fn watch_policies_in(self: Arc<Self>, scope: Option<String>, ready: Arc<AtomicBool>, unlisted: Arc<std::sync::atomic::AtomicUsize>) {
        let api: Api<DriftPolicy> = match &scope {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let tenancy = self.settings.tenancy.clone();
        let compile = |p: DriftPolicy| Arc::new(CompiledPolicy::compile(&tenancy, p));
        drive("DriftPolicy", api, watcher::Config::default(), |p| p, |change| match change {
            Change::Listed { objects, first } => {
                let mut policies = self.policies.write().expect("policies");
                policies.retain(|p| scope.as_ref().is_some_and(|s| p.policy.metadata.namespace.as_ref() != Some(s)));
                policies.extend(objects.into_iter().map(compile));
                drop(policies);
                if first && unlisted.fetch_sub(1, Ordering::SeqCst) == 1 {
                    self.policies_listed.store(true, Ordering::SeqCst);
                    ready.store(true, Ordering::SeqCst);
                }
                // Once every scope has listed (one scope's policies alone would uncover the
                // releases another scope's policies select).
                if unlisted.load(Ordering::SeqCst) == 0 {
                    self.enqueue(Work::All);
                }
            }
            Change::Applied(p) => {
                let relevant = self.may_select(&p);
                let mut ps = self.policies.write().expect("policies");
                // A status write (ours) does not change the generation: nothing to re-check.
                let spec_changed = ps.iter().find(|o| o.policy.metadata.uid == p.metadata.uid).is_none_or(|o| o.policy.metadata.generation != p.metadata.generation);
                ps.retain(|o| o.policy.metadata.uid != p.metadata.uid);
                ps.push(compile(p));
                drop(ps);
                if spec_changed && relevant {
                    self.enqueue(Work::All);
                }
            }
            Change::Deleted(p) => {
                self.policies.write().expect("policies").retain(|o| o.policy.metadata.uid != p.metadata.uid);
                self.policy_written.lock().expect("policy status memo").remove(&policy_key(&p));
                if self.may_select(&p) {
                    self.enqueue(Work::All);
                }
            }
        })
        .await
    }

    /// With shards: the reports of every shard, reduced to what the policies' status counts
    /// ([`super::index::Tally`]). A change of a count asks the holder of shard 0 to write the
    /// policies' status (on the `Later` lane: once for a burst of reports).
    pub(super) async fn watch_tallies(self: Arc<Self>) {
        let scopes = self.namespaces();
        let listed = Arc::new(std::sync::atomic::AtomicUsize::new(scopes.len()));
        let watches = scopes.into_iter().map(|scope| Arc::clone(&self).watch_tallies_in(scope, listed.clone()));
        futures::future::join_all(watches).await;
    }

    async fn watch_tallies_in(self: Arc<Self>, scope: Option<String>, unlisted: Arc<std::sync::atomic::AtomicUsize>) {
        let api: Api<DriftReport> = match &scope {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let keep = |r: DriftReport| ((r.metadata.namespace.clone().unwrap_or_default(), r.metadata.name.clone().unwrap_or_default()), r.status.as_ref().map(Tally::of_status));
        drive("DriftReport", api, watcher::Config::default(), keep, |change| {
            let changed = {
                let mut tallies = self.tallies.lock().expect("tallies");
                let (listed, all) = &mut *tallies;
                match change {
                    Change::Listed { objects, first } => {
                        all.retain(|k, _| scope.as_ref().is_some_and(|s| &k.0 != s));
                        all.extend(objects.into_iter().filter_map(|(k, t)| Some((k, t?))));
                        // Until every scope has listed, no count is whole.
                        if first && unlisted.fetch_sub(1, Ordering::SeqCst) == 1 {
                            *listed = true;
                        }
                        *listed
                    }
                    Change::Applied((k, Some(t))) => all.insert(k, t.clone()).is_none_or(|was| was != t),
                    Change::Applied((k, None)) | Change::Deleted((k, _)) => all.remove(&k).is_some(),
                }
            };
            if changed && unlisted.load(Ordering::SeqCst) == 0 && self.writer.leadership.leads() {
                self.enqueue_policy_status();
            }
        })
        .await
    }

    /// One driver's release records (metadata only): the record index, and a re-check of a
    /// release when one of its records changes. A re-list after a broken watch re-checks only
    /// the releases whose records changed meanwhile.
    pub(super) async fn watch_records<K>(self: Arc<Self>, driver: Driver, ns: Option<String>, config: watcher::Config)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    {
        let api: Api<PartialObjectMeta<K>> = match &ns {
            Some(n) => Api::namespaced(self.client.clone(), n),
            None => Api::all(self.client.clone()),
        };
        let secret_type = (driver == Driver::Secret).then_some(crate::helm::records::SECRET_TYPE);
        // A record as its metadata says, and (for one that does not parse) the release its
        // labels name.
        let keep = |o: PartialObjectMeta<K>| match RecordMeta::from_metadata(driver, &o.metadata, secret_type) {
            Ok(r) => (Some(r), None),
            Err(_) => (None, o.metadata.namespace.clone().zip(o.metadata.labels.as_ref().and_then(|l| l.get("name")).cloned())),
        };
        drive("release records", api, config, keep, |change| match change {
            Change::Listed { objects, first } => {
                let mut index = self.index();
                let changed = index.records.reset(driver, ns.as_deref(), objects.into_iter().filter_map(|(r, _)| r).collect());
                if first {
                    index.records.listed += 1;
                } else {
                    drop(index);
                    self.enqueue_pass(changed);
                }
            }
            Change::Applied((record, _)) => {
                if let Some(r) = record {
                    let key = self.index().records.apply(r);
                    self.enqueue_releases([key]);
                }
            }
            Change::Deleted((record, named)) => {
                if let Some(r) = record {
                    let key = self.index().records.delete(&r);
                    self.enqueue_releases([key]);
                } else if let Some((ns, name)) = named {
                    self.enqueue(Work::Release(ns, name));
                }
            }
        })
        .await
    }

    /// Starts watching a kind's live objects (metadata only), once per kind, so a change
    /// re-checks its release: one watch over the cluster, or with watched namespaces one per
    /// namespace (a namespaced install has no cluster-wide read; its cluster-scoped kinds are
    /// not watched, and are read at each check).
    pub(super) async fn watch_kind(self: &Arc<Self>, api_version: &str, kind: &str) {
        let kind: KindKey = (api_version.to_string(), kind.to_string());
        if !self.watched_kinds.lock().expect("watched kinds").insert(kind.clone()) {
            return;
        }
        let Ok(resolved) = self.resolver.resolve(&kind.0, &kind.1).await else { return };
        let scopes = match (resolved.namespaced, self.settings.watch_namespaces.is_empty()) {
            (_, true) => vec![None],
            (true, false) => self.namespaces(),
            (false, false) => Vec::new(),
        };
        for scope in scopes {
            let api: Api<PartialObjectMeta<DynamicObject>> = match &scope {
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resolved.resource),
                None => Api::all_with(self.client.clone(), &resolved.resource),
            };
            tokio::spawn(Arc::clone(self).watch_kind_in(kind.clone(), scope, api));
        }
    }

    async fn watch_kind_in(self: Arc<Self>, kind: KindKey, scope: Option<String>, api: Api<PartialObjectMeta<DynamicObject>>) {
        let id = |m: &ObjectMeta| Some((m.namespace.clone().unwrap_or_default(), m.name.clone()?));
        // Of each object only its id and, for one Helm made, its token and release.
        let keep = |o: PartialObjectMeta<DynamicObject>| (id(&o.metadata), helm_object(&kind, &o.metadata).map(|(_, token, release)| (token, release)));
        // Objects of this kind counted into the gauge; a re-list replaces the count.
        let mut counted = 0f64;
        drive(&kind.1.clone(), api, watcher::Config::default(), keep, |change| match change {
            Change::Listed { objects, .. } => {
                let n = objects.len() as f64;
                self.metrics.watched_objects.add(n - counted);
                counted = n;
                let listing = objects.into_iter().filter_map(|(id, helm)| Some((id?, helm?))).map(|(id, (token, release))| (id, token, release)).collect();
                let stale = self.index().live_listed(&kind, scope.as_deref(), listing);
                self.enqueue_pass(stale);
            }
            Change::Applied((id, helm)) => {
                let Some(id) = id else { return };
                let token = helm.as_ref().map(|(t, _)| *t);
                let changed = self.index().live_applied(&kind, id.clone(), helm);
                if let Some((release, before)) = changed {
                    tracing::debug!(kind = kind.1, namespace = id.0, name = id.1, ?before, ?token, "object changed");
                    self.enqueue_releases([release]);
                }
            }
            Change::Deleted((id, helm)) => {
                let Some(id) = id else { return };
                let release = helm.map(|(_, r)| r);
                let release = self.index().live_deleted(&kind, &id, release);
                self.enqueue_releases(release);
            }
        })
        .await
    }
}
