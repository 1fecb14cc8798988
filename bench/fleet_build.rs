//! The fast half of building a fleet (issue 18): a release made by real helm is the sample;
//! each copy gets the sample's records, written exactly as Helm writes them (the release JSON
//! with the release's name and namespace put in, gzip, base64, a `helm.sh/release.v1` Secret
//! per revision with Helm's labels), and the objects of its deployed revision's manifest,
//! written as Helm writes them: with Helm's ownership label and annotations, as field manager
//! `helm`, by create (client-side, Helm 3 and Helm 4 `csa`) or server-side apply (Helm 4
//! `ssa`). Shared by `bench/fleet-build.rs` and the test that helm of both majors reads the
//! copies back as it reads the sample (`tests/fleet_build.rs`).

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use driftwatch::cluster::Resolver;
use driftwatch::helm::{ApplyMethod, split_manifest};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::Value;

/// One revision of a sample release: its Secret's labels and the release JSON as Helm wrote it.
#[derive(Clone, Debug)]
pub struct SampleRecord {
    pub version: u32,
    pub labels: BTreeMap<String, String>,
    pub json: String,
}

/// A release made by real helm, read once, to copy from.
#[derive(Clone, Debug)]
pub struct Sample {
    pub namespace: String,
    pub name: String,
    /// Oldest first.
    pub records: Vec<SampleRecord>,
}

impl Sample {
    /// Reads the sample's records (Secrets driver) from the cluster.
    pub async fn read(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Sample> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let list = secrets.list(&ListParams::default().labels(&format!("owner=helm,name={name}"))).await?;
        let mut records = Vec::new();
        for s in list.items {
            let labels = s.metadata.labels.clone().unwrap_or_default();
            let version: u32 = labels.get("version").and_then(|v| v.parse().ok()).context("a record without a version label")?;
            let payload = s.data.as_ref().and_then(|d| d.get("release")).context("a record without data.release")?;
            records.push(SampleRecord { version, labels, json: decode_text(&payload.0)? });
        }
        if records.is_empty() {
            bail!("no release {namespace}/{name} to copy (make it with helm first)");
        }
        records.sort_by_key(|r| r.version);
        Ok(Sample { namespace: namespace.into(), name: name.into(), records })
    }

    /// The sample's record JSON with the copy's name and namespace in place of its own.
    pub fn json_for(&self, record: &SampleRecord, namespace: &str, name: &str) -> String {
        record.json.replace(&self.name, name).replace(&self.namespace, namespace)
    }
}

/// The release JSON of a record's `data.release` (base64, gzip), as text.
fn decode_text(payload: &[u8]) -> anyhow::Result<String> {
    use std::io::Read as _;
    let gz = base64::engine::general_purpose::STANDARD.decode(payload.trim_ascii()).context("record payload: base64")?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut text).context("record payload: gzip")?;
    Ok(text)
}

/// What writing one copy did: objects created or applied, records written (0 and 0 when the
/// copy was already there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub objects: usize,
    pub records: usize,
}

/// Writes a copy of `sample` as release `name` in `namespace` (which must exist): the objects
/// of the deployed revision first, then every record. A copy already there is left alone.
pub async fn copy_release(client: &Client, resolver: &Resolver, sample: &Sample, namespace: &str, name: &str) -> anyhow::Result<Written> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let newest = sample.records.last().expect("a sample has records");
    if secrets.get_opt(&record_name(name, newest.version)).await?.is_some() {
        return Ok(Written::default());
    }
    let deployed = sample.records.iter().rev().find(|r| r.labels.get("status").map(String::as_str) == Some("deployed")).unwrap_or(newest);
    let json = sample.json_for(deployed, namespace, name);
    let release: driftwatch::helm::Release = serde_json::from_str(&json).context("the sample's release JSON")?;
    let mut written = Written::default();
    for o in split_manifest(&release.manifest).objects {
        let kind = resolver.resolve(&o.api_version, &o.kind).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let ns = kind.namespace_of(o.namespace.as_deref(), namespace);
        let mut object = o.object.clone();
        // What Helm adds to every object it creates (action.setMetadataVisitor).
        let meta = object.as_object_mut().context("an object")?.entry("metadata").or_insert_with(|| Value::Object(Default::default()));
        meta["labels"]["app.kubernetes.io/managed-by"] = "Helm".into();
        meta["annotations"]["meta.helm.sh/release-name"] = name.into();
        meta["annotations"]["meta.helm.sh/release-namespace"] = namespace.into();
        if let Some(ns) = &ns {
            meta["namespace"] = ns.as_str().into();
        }
        let api: Api<DynamicObject> = match &ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &kind.resource),
            None => Api::all_with(client.clone(), &kind.resource),
        };
        let result = match release.apply_method {
            ApplyMethod::Ssa => api.patch(&o.name, &PatchParams::apply("helm"), &Patch::Apply(&object)).await.map(|_| ()),
            ApplyMethod::Csa => {
                let object: DynamicObject = serde_json::from_value(object)?;
                api.create(&PostParams { field_manager: Some("helm".into()), ..Default::default() }, &object).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => written.objects += 1,
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("{} {} in {namespace}", o.kind, o.name)),
        }
    }
    for record in &sample.records {
        let json = sample.json_for(record, namespace, name);
        let mut labels = record.labels.clone();
        labels.insert("name".into(), name.into());
        let secret = Secret {
            metadata: kube::api::ObjectMeta { name: Some(record_name(name, record.version)), namespace: Some(namespace.into()), labels: Some(labels), ..Default::default() },
            type_: Some(driftwatch::helm::records::SECRET_TYPE.into()),
            data: Some([("release".to_string(), ByteString(driftwatch::helm::release::encode_release_json(json.as_bytes())))].into()),
            ..Default::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => written.records += 1,
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).context("a release record"),
        }
    }
    Ok(written)
}

fn record_name(release: &str, version: u32) -> String {
    format!("sh.helm.release.v1.{release}.v{version}")
}
