//! Resolving manifest objects against the API server: kind → resource and scope (discovery,
//! cached per group-version), the kind's schema (OpenAPI v3; the fragments of each kind in use
//! are kept), live reads (by LIST per kind and namespace when a scan asks for several objects of
//! one, see [`Resolver::read_live`]), and the server-side dry-run that confirms a local verdict.
//! Counts its requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::Value;
use tokio::sync::Mutex;

use super::listing::{Listings, list_pages};
use crate::drift::OpenApiSchema;

/// A kind as the API serves it.
#[derive(Clone, Debug)]
pub struct ResolvedKind {
    pub resource: ApiResource,
    pub namespaced: bool,
}

impl ResolvedKind {
    /// Where a manifest object of this kind lives, by Helm's rule: a namespaced object without
    /// a namespace lives in the release namespace; a cluster-scoped one has none, whatever the
    /// manifest says.
    pub fn namespace_of(&self, manifest_namespace: Option<&str>, release_namespace: &str) -> Option<String> {
        self.namespaced.then(|| manifest_namespace.unwrap_or(release_namespace).to_string())
    }
}

/// Why an object could not be resolved or read; the message is for people.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("kind {kind} of {api_version} is not served by this API server")]
    NotServed { api_version: String, kind: String },
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The API server answered no, for good (an invalid request, say).
    #[error("{0}")]
    Refused(String),
    /// The API server did not answer, or answered that it could not yet.
    #[error("{0}")]
    Api(String),
}

impl ResolveError {
    /// Whether asking again may give another answer (see [`super::is_transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, ResolveError::Api(_))
    }
}

fn api_error(e: kube::Error) -> ResolveError {
    match e {
        kube::Error::Api(s) if s.code == 403 => ResolveError::Forbidden(s.message.clone()),
        other if super::is_transient(&other) => ResolveError::Api(other.to_string()),
        other => ResolveError::Refused(other.to_string()),
    }
}

/// Discovery, schemas and live reads through one client, with caches.
pub struct Resolver {
    client: Client,
    resources: Mutex<HashMap<String, Result<Arc<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource>>, ResolveError>>>,
    openapi_index: Mutex<Option<Option<Value>>>,
    /// Each kind's schema, by "apiVersion kind" (made once: a check asks for every object).
    /// Only these fragments are kept, never a whole document (memory, issue 18): a document is
    /// read again for another kind of its group-version, once per kind.
    kinds: std::sync::Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Option<Arc<OpenApiSchema>>>>>>,
    requests: AtomicUsize,
    /// Live reads from the API server's watch cache (`resourceVersion=0`) instead of etcd.
    cached_reads: bool,
    /// Listings of a kind in a namespace that serve [`Resolver::read_live`], by resource and
    /// namespace: each object as the API server's JSON (compact: parsed when taken).
    listings: Listings<Box<str>>,
}

pub use super::listing::{LIST_PAGE, LISTING_TTL};

#[derive(serde::Deserialize)]
struct Named {
    metadata: NameOnly,
}

#[derive(serde::Deserialize)]
struct NameOnly {
    name: String,
}

/// The field manager of confirmation dry-runs (never persisted: dry-run).
pub const CONFIRM_MANAGER: &str = "driftwatch-confirm";

impl Resolver {
    pub fn new(client: Client) -> Self {
        Resolver {
            client,
            resources: Mutex::new(HashMap::new()),
            openapi_index: Mutex::new(None),
            kinds: std::sync::Mutex::new(HashMap::new()),
            requests: AtomicUsize::new(0),
            cached_reads: false,
            listings: Listings::default(),
        }
    }

    /// A resolver whose live reads are served from the API server's watch cache
    /// (`resourceVersion=0`): much cheaper for the server than a quorum read from etcd, and as
    /// fresh as what the controller's own watches (served from the same cache) have shown it.
    /// The CLI keeps quorum reads: a person who just edited something expects to see it.
    pub fn with_cached_reads(client: Client) -> Self {
        Resolver { cached_reads: true, ..Resolver::new(client) }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// API requests this resolver made.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub async fn resolve(&self, api_version: &str, kind: &str) -> Result<ResolvedKind, ResolveError> {
        let list = {
            let mut cache = self.resources.lock().await;
            if let Some(hit) = cache.get(api_version) {
                hit.clone()
            } else {
                self.count();
                let fetched = if api_version.contains('/') {
                    self.client.list_api_group_resources(api_version).await
                } else {
                    self.client.list_core_api_resources(api_version).await
                };
                let entry = match fetched {
                    Ok(l) => Ok(Arc::new(l.resources)),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(Arc::new(Vec::new())),
                    Err(e) => Err(api_error(e)),
                };
                // A failed discovery is not remembered: the next check asks again (an outage
                // must not leave a kind "not served" for the life of the process).
                if entry.is_ok() {
                    cache.insert(api_version.to_string(), entry.clone());
                }
                entry
            }
        }?;
        let found = list.iter().find(|r| r.kind == kind && !r.name.contains('/'));
        let Some(r) = found else {
            return Err(ResolveError::NotServed { api_version: api_version.into(), kind: kind.into() });
        };
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        Ok(ResolvedKind { resource: ApiResource::from_gvk_with_plural(&gvk, &r.name), namespaced: r.namespaced })
    }

    /// The kind's schema from the server's OpenAPI v3 document; `Ok(None)` when it has none;
    /// an error (not remembered) when the document could not be read.
    pub async fn schema(&self, api_version: &str, kind: &str) -> Result<Option<Arc<OpenApiSchema>>, ResolveError> {
        // One read per kind: the checks that want the same kind wait for it (a failed read
        // leaves the cell empty, and the next check reads again).
        let cell = self.kinds.lock().expect("schema cache").entry(format!("{api_version} {kind}")).or_default().clone();
        let schema = cell
            .get_or_try_init(|| async {
                let path = if api_version.contains('/') { format!("apis/{api_version}") } else { format!("api/{api_version}") };
                let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
                let Some(document) = self.fetch_openapi(&path).await? else { return Ok(None) };
                let schema = OpenApiSchema::for_kind_in_document(&document, group, version, kind).map_err(|e| ResolveError::Api(format!("the OpenAPI document of {api_version}: {e}")))?;
                Ok::<_, ResolveError>(schema.map(Arc::new))
            })
            .await?;
        Ok(schema.clone())
    }

    /// A group-version's OpenAPI v3 document, as text; `Ok(None)` when the server lists none
    /// for it. Failed reads are errors and are not remembered.
    async fn fetch_openapi(&self, path: &str) -> Result<Option<String>, ResolveError> {
        let url = {
            let mut index = self.openapi_index.lock().await;
            if index.is_none() {
                self.count();
                let text = self.get_text("/openapi/v3").await?;
                *index = Some(text.map(|t| serde_json::from_str(&t).map_err(|e| ResolveError::Api(format!("the OpenAPI index: {e}")))).transpose()?);
            }
            let found = index
                .as_ref()
                .and_then(|i| i.as_ref())
                .and_then(|i| i.pointer(&format!("/paths/{}/serverRelativeURL", path.replace('~', "~0").replace('/', "~1"))))
                .and_then(Value::as_str);
            match found {
                Some(u) => u.to_string(),
                None => return Ok(None),
            }
        };
        self.count();
        self.get_text(&url).await
    }

    /// A document of the API server, as text: `Ok(None)` when it does not exist (404).
    async fn get_text(&self, url: &str) -> Result<Option<String>, ResolveError> {
        let req = http::Request::get(url).body(Vec::new()).map_err(|e| ResolveError::Refused(e.to_string()))?;
        match self.client.request_text(req).await {
            Ok(text) => Ok(Some(text)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(api_error(e)),
        }
    }

    fn api(&self, kind: &ResolvedKind, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) if kind.namespaced => Api::namespaced_with(self.client.clone(), ns, &kind.resource),
            _ => Api::all_with(self.client.clone(), &kind.resource),
        }
    }

    /// The live object, or None when it does not exist.
    pub async fn get_live(&self, kind: &ResolvedKind, namespace: Option<&str>, name: &str) -> Result<Option<Value>, ResolveError> {
        self.count();
        let api = self.api(kind, namespace);
        let obj = if self.cached_reads {
            match api.get_with(name, &kube::api::GetParams::any()).await {
                Ok(o) => Some(o),
                Err(kube::Error::Api(s)) if s.code == 404 => None,
                Err(e) => return Err(api_error(e)),
            }
        } else {
            api.get_opt(name).await.map_err(api_error)?
        };
        Ok(obj.map(|o| serde_json::to_value(o).expect("a DynamicObject serialises")))
    }

    /// Drops the listings older than [`LISTING_TTL`] (reads drop them too, but after a scan
    /// none may come for a long time: what nobody asked for would stay).
    pub fn drop_stale_listings(&self) {
        self.listings.drop_stale();
    }

    /// The live object as a scan reads it, or None when it does not exist. The first object of
    /// a kind in a namespace is read by GET; asking for a second within [`LISTING_TTL`] lists
    /// the kind in that namespace once (in pages of [`LIST_PAGE`], from the watch cache with
    /// cached reads) and serves it and the rest from that listing, each object once. An object
    /// the listing does not hold (created since, deleted, or a listing that failed) is read by
    /// GET, so no answer rests on the listing alone; so is a listed copy `current` refuses (the
    /// controller's watches have seen another version of it). Inside
    /// [`super::listing::one_by_one`] (a change's check) every read is a GET. For reads that must
    /// be fresh (a heal), use [`Resolver::get_live`].
    pub async fn read_live(&self, kind: &ResolvedKind, namespace: Option<&str>, name: &str, current: &(dyn Fn(&Value) -> bool + Sync)) -> Result<Option<Value>, ResolveError> {
        let namespace = namespace.filter(|_| kind.namespaced);
        let scope = format!("{}/{} {}", kind.resource.api_version, kind.resource.plural, namespace.unwrap_or(""));
        let Some(listing) = self.listings.ask(scope) else {
            return self.get_live(kind, namespace, name).await;
        };
        if let Some(text) = listing.take(name, || self.list_all(kind, namespace)).await {
            if let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(&text) {
                // A list's items carry no apiVersion and kind; a GET's do.
                object.insert("apiVersion".into(), Value::String(kind.resource.api_version.clone()));
                object.insert("kind".into(), Value::String(kind.resource.kind.clone()));
                let object = Value::Object(object);
                if current(&object) {
                    return Ok(Some(object));
                }
            }
        }
        self.get_live(kind, namespace, name).await
    }

    /// Every object of a kind in a namespace (or the cluster), page by page, as text by name.
    /// None when a page could not be read (the caller reads object by object instead).
    async fn list_all(&self, kind: &ResolvedKind, namespace: Option<&str>) -> Option<HashMap<String, Box<str>>> {
        let api = self.api(kind, namespace);
        // Helm's own release records are Secrets too, each with a whole chart in it: never
        // in a manifest, left out of the listing.
        let skip_records = (kind.resource.group.is_empty() && kind.resource.kind == "Secret").then(|| format!("type!={}", crate::helm::records::SECRET_TYPE));
        let params = ListParams { field_selector: skip_records, ..ListParams::default() };
        let params = if self.cached_reads { params.match_any() } else { params };
        let keep = |item: &str| serde_json::from_str::<Named>(item).ok().map(|n| (n.metadata.name, Box::from(item)));
        list_pages(&self.client, &api.resource_url(), params, || self.count(), keep).await
    }

    /// What the object would be after a server-side apply of `desired` (dry-run: nothing is
    /// written). Used to tell real drift from a gap in local normalisation.
    pub async fn dry_run_apply(&self, kind: &ResolvedKind, namespace: Option<&str>, desired: &Value) -> Result<Value, ResolveError> {
        self.count();
        let name = desired.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let mut body = desired.clone();
        if let (Some(ns), true) = (namespace, kind.namespaced) {
            body["metadata"]["namespace"] = Value::String(ns.to_string());
        }
        let params = PatchParams { dry_run: true, force: true, field_manager: Some(CONFIRM_MANAGER.into()), ..Default::default() };
        let obj = self.api(kind, namespace).patch(&name, &params, &Patch::Apply(&body)).await.map_err(api_error)?;
        Ok(serde_json::to_value(obj).expect("a DynamicObject serialises"))
    }
}
