//! Reading Helm's release storage from the API: record metadata by label (no payloads), and
//! the payload of exactly the revision a check needs.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams};
use kube::Client;

use std::collections::HashMap;

use base64::Engine as _;

use super::listing::{Listings, list_pages};
use crate::helm::records::{OWNER_SELECTOR, RecordMetaError, SECRET_TYPE};
use crate::helm::{DecodeError, Driver, RecordMeta, Release, ReleaseHistory, ReleaseStatus, decode_release};

/// A release at its newest revision, as `helm list` shows it: from the record's labels, then its
/// decoded payload (`check --list`, `inventory`).
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListedRelease {
    pub name: String,
    pub namespace: String,
    pub revision: u32,
    pub status: ReleaseStatus,
    pub chart: String,
    pub chart_version: String,
    pub app_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_deployed: Option<jiff::Timestamp>,
    pub storage: Driver,
    /// Set when the newest record could not be read; the other fields then come from labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why release storage could not be read. Each error names the object or scope it is about.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("listing Helm release {driver}s in {scope}: {source}")]
    List {
        driver: Driver,
        scope: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {driver} {namespace}/{name}: {source}")]
    Get {
        driver: Driver,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{driver} {namespace}/{name} has no data.release")]
    NoPayload { driver: Driver, namespace: String, name: String },
    #[error("decoding {driver} {namespace}/{name}: {source}")]
    Decode {
        driver: Driver,
        namespace: String,
        name: String,
        #[source]
        source: DecodeError,
    },
}

impl StorageError {
    /// Whether reading again may work: the API server did not answer (a missing or corrupt
    /// record stays so).
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::List { source, .. } | StorageError::Get { source, .. } => super::is_transient(source),
            _ => false,
        }
    }
}

impl StorageError {
    /// True when the API refused for lack of permission (a namespace the caller may not read).
    pub fn is_forbidden(&self) -> bool {
        match self {
            StorageError::List { source, .. } | StorageError::Get { source, .. } => {
                matches!(source, kube::Error::Api(s) if s.code == 403)
            }
            _ => false,
        }
    }
}

/// What a listing found: records, objects that look like storage but are not usable records,
/// and drivers/scopes that could not be listed at all.
#[derive(Debug, Default)]
pub struct Listing {
    pub records: Vec<RecordMeta>,
    pub malformed: Vec<RecordMetaError>,
    pub errors: Vec<StorageError>,
}

/// Helm's release storage (both drivers) as seen through one client.
#[derive(Clone)]
pub struct ReleaseStore {
    client: Client,
    /// Listings of the release payloads of a namespace that serve [`ReleaseStore::fetch_payload`]
    /// by (driver, namespace): each record's uid and payload, by object name.
    payloads: std::sync::Arc<Listings<(Option<String>, Vec<u8>)>>,
}

/// What a payload listing reads of a record: its name, uid and payload.
#[derive(serde::Deserialize)]
struct ListedRecord {
    metadata: ListedMeta,
    #[serde(default)]
    data: ListedData,
}

#[derive(serde::Deserialize)]
struct ListedMeta {
    name: String,
    #[serde(default)]
    uid: Option<String>,
}

#[derive(Default, serde::Deserialize)]
struct ListedData {
    #[serde(default)]
    release: Option<String>,
}

const PAGE: u32 = 500;

impl ReleaseStore {
    pub fn new(client: Client) -> Self {
        ReleaseStore { client, payloads: Default::default() }
    }

    /// Drops the payload listings no read asked for within their time to live (see
    /// [`super::listing`]).
    pub fn drop_stale_listings(&self) {
        self.payloads.drop_stale();
    }

    /// Lists release records in one namespace or all (`None`), metadata only. A driver that
    /// cannot be listed (forbidden, say) is reported in `errors`; the other still is.
    pub async fn list(&self, namespace: Option<&str>) -> Listing {
        self.list_selected(namespace, OWNER_SELECTOR).await
    }

    /// The records of one release (both drivers), metadata only.
    pub async fn list_release(&self, namespace: &str, name: &str) -> Listing {
        self.list_selected(Some(namespace), &format!("{OWNER_SELECTOR},name={name}")).await
    }

    /// Both drivers' records matching a label selector (which always includes `owner=helm`).
    async fn list_selected(&self, namespace: Option<&str>, selector: &str) -> Listing {
        let scope = namespace.map_or_else(|| "all namespaces".to_string(), |n| format!("namespace {n}"));
        let mut out = Listing::default();
        let secrets: Api<Secret> = self.api(namespace);
        let lp = ListParams::default().labels(selector).fields(&format!("type={SECRET_TYPE}"));
        match list_all(&secrets, lp).await {
            Ok(metas) => collect(Driver::Secret, metas, Some(SECRET_TYPE), &mut out),
            Err(source) => out.errors.push(StorageError::List { driver: Driver::Secret, scope: scope.clone(), source }),
        }
        let cms: Api<ConfigMap> = self.api(namespace);
        match list_all(&cms, ListParams::default().labels(selector)).await {
            Ok(metas) => collect(Driver::ConfigMap, metas, None, &mut out),
            Err(source) => out.errors.push(StorageError::List { driver: Driver::ConfigMap, scope, source }),
        }
        out
    }

    /// A release at its newest revision: one GET of that record, decoded; when it cannot be
    /// read, what the labels say, with the error.
    pub async fn newest(&self, history: &ReleaseHistory) -> ListedRelease {
        let latest = history.latest();
        let mut row = ListedRelease {
            name: history.name.clone(),
            namespace: history.namespace.clone(),
            revision: latest.revision,
            status: latest.status.clone(),
            chart: String::new(),
            chart_version: String::new(),
            app_version: String::new(),
            last_deployed: None,
            storage: history.driver,
            error: None,
        };
        match self.fetch(latest).await {
            Ok(rel) => {
                row.status = rel.info.status;
                row.chart = rel.chart.metadata.name;
                row.chart_version = rel.chart.metadata.version;
                row.app_version = rel.chart.metadata.app_version;
                row.last_deployed = rel.info.last_deployed;
            }
            Err(e) => row.error = Some(e.to_string()),
        }
        row
    }

    /// Reads and decodes one record.
    pub async fn fetch(&self, record: &RecordMeta) -> Result<Release, StorageError> {
        let payload = self.fetch_payload(record).await?;
        decode_release(&payload).map_err(|source| StorageError::Decode {
            driver: record.driver,
            namespace: record.namespace.clone(),
            name: record.object_name.clone(),
            source,
        })
    }

    /// The raw `data.release` of a record (Helm's base64 text). A scan reads many: the first of
    /// a namespace is a GET, the second lists the namespace's records that are not
    /// `superseded` (every release's reference and newest revision, in a few pages) and the
    /// rest are taken from that listing ([`super::listing`]). A listed record is used only if
    /// it is the very object the caller knows (its uid); else, or when the listing does not
    /// hold it, it is read by GET.
    pub async fn fetch_payload(&self, record: &RecordMeta) -> Result<Vec<u8>, StorageError> {
        if let Some(listing) = self.payloads.ask(format!("{} {}", record.driver, record.namespace)) {
            let listed = listing.take(&record.object_name, || self.list_payloads(record.driver, &record.namespace)).await;
            if let Some((uid, payload)) = listed {
                if uid.is_some() && uid == record.uid {
                    return Ok(payload);
                }
            }
        }
        self.get_payload(record).await
    }

    /// The payloads of a namespace's records that are not superseded, by object name.
    async fn list_payloads(&self, driver: Driver, namespace: &str) -> Option<HashMap<String, (Option<String>, Vec<u8>)>> {
        let selector = format!("{OWNER_SELECTOR},status!=superseded");
        let (url, params) = match driver {
            Driver::Secret => (self.api::<Secret>(Some(namespace)).resource_url().to_string(), ListParams::default().labels(&selector).fields(&format!("type={SECRET_TYPE}"))),
            Driver::ConfigMap => (self.api::<ConfigMap>(Some(namespace)).resource_url().to_string(), ListParams::default().labels(&selector)),
        };
        let keep = |item: &str| {
            let r: ListedRecord = serde_json::from_str(item).ok()?;
            let text = r.data.release?;
            // A Secret's data is base64 in the API (Helm's own base64 text inside it); a
            // ConfigMap's is the text itself.
            let payload = match driver {
                Driver::Secret => base64::engine::general_purpose::STANDARD.decode(text).ok()?,
                Driver::ConfigMap => text.into_bytes(),
            };
            Some((r.metadata.name, (r.metadata.uid, payload)))
        };
        list_pages(&self.client, &url, params, || {}, keep).await
    }

    /// One record's payload by GET.
    async fn get_payload(&self, record: &RecordMeta) -> Result<Vec<u8>, StorageError> {
        let get_err = |source| StorageError::Get {
            driver: record.driver,
            namespace: record.namespace.clone(),
            name: record.object_name.clone(),
            source,
        };
        let payload = match record.driver {
            Driver::Secret => {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &record.namespace);
                let s = api.get(&record.object_name).await.map_err(get_err)?;
                s.data.and_then(|mut d| d.remove("release")).map(|b| b.0)
            }
            Driver::ConfigMap => {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &record.namespace);
                let c = api.get(&record.object_name).await.map_err(get_err)?;
                c.data.and_then(|mut d| d.remove("release")).map(String::into_bytes)
            }
        };
        payload.ok_or_else(|| StorageError::NoPayload {
            driver: record.driver,
            namespace: record.namespace.clone(),
            name: record.object_name.clone(),
        })
    }

    fn api<K>(&self, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }
}

async fn list_all<K>(api: &Api<K>, lp: ListParams) -> Result<Vec<kube::core::PartialObjectMeta<K>>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut lp = lp.limit(PAGE);
    let mut items = Vec::new();
    loop {
        let page = api.list_metadata(&lp).await?;
        items.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => lp = lp.continue_token(&token),
            _ => return Ok(items),
        }
    }
}

fn collect<K>(driver: Driver, metas: Vec<kube::core::PartialObjectMeta<K>>, secret_type: Option<&str>, out: &mut Listing) {
    for m in metas {
        match RecordMeta::from_metadata(driver, &m.metadata, secret_type) {
            Ok(r) => out.records.push(r),
            Err(e) => out.malformed.push(e),
        }
    }
}
