//! Decoding of one release record: Helm's base64 → gzip (when the gzip magic is there; Helm
//! also accepts plain JSON) → JSON, as a stream. The bulky parts a drift check never needs
//! (`chart.templates`, `chart.files`, `chart.values`, `chart.schema`) are skipped while
//! parsing, so they never take memory.

use std::cell::Cell;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::rc::Rc;

use base64::Engine as _;
use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};

/// A decoded Helm release (one revision), with only what Driftwatch uses.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Release {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    /// The revision number.
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    pub info: ReleaseInfo,
    #[serde(default)]
    pub chart: ChartRef,
    /// The user-supplied values. Never logged or reported: `Debug` shows only their size.
    #[serde(default)]
    pub config: UserValues,
    /// The rendered manifest, hooks excluded.
    #[serde(default)]
    pub manifest: String,
    #[serde(default)]
    pub hooks: Vec<Hook>,
    /// Helm 4 records whether it applied client- or server-side; absent means client-side.
    #[serde(default)]
    pub apply_method: ApplyMethod,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ReleaseInfo {
    #[serde(default, deserialize_with = "helm_time")]
    pub first_deployed: Option<Timestamp>,
    #[serde(default, deserialize_with = "helm_time")]
    pub last_deployed: Option<Timestamp>,
    #[serde(default, deserialize_with = "helm_time")]
    pub deleted: Option<Timestamp>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub status: ReleaseStatus,
    #[serde(default)]
    pub notes: String,
}

/// The chart of a release: its metadata only (templates, files, values and schema are skipped).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ChartRef {
    #[serde(default)]
    pub metadata: ChartMetadata,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChartMetadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub app_version: String,
}

/// A hook of the release (`helm.sh/hook`), stored apart from the manifest.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Hook {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub manifest: String,
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub last_run: HookExecution,
    #[serde(default)]
    pub weight: i64,
    #[serde(default)]
    pub delete_policies: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct HookExecution {
    #[serde(default, deserialize_with = "helm_time")]
    pub started_at: Option<Timestamp>,
    #[serde(default, deserialize_with = "helm_time")]
    pub completed_at: Option<Timestamp>,
    #[serde(default)]
    pub phase: String,
}

/// The values a user gave the release. Kept for later features (diagnosis, rendering), never
/// shown: they routinely hold passwords.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct UserValues(pub Option<serde_json::Map<String, serde_json::Value>>);

impl fmt::Debug for UserValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.as_ref().map_or(0, |m| m.len());
        write!(f, "UserValues(redacted, {n} top-level keys)")
    }
}

/// How Helm applied the release's objects (Helm 4 `apply_method`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum ApplyMethod {
    /// Client-side apply (three-way strategic merge): Helm 3, and Helm 4's default for
    /// releases first made by Helm 3.
    #[default]
    #[serde(rename = "csa", alias = "")]
    Csa,
    /// Server-side apply with field manager `helm`.
    #[serde(rename = "ssa")]
    Ssa,
}

impl fmt::Display for ApplyMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ApplyMethod::Csa => "csa",
            ApplyMethod::Ssa => "ssa",
        })
    }
}

/// A release's status as Helm names it. Unknown spellings are kept, not rejected: a newer Helm
/// may add one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReleaseStatus {
    #[default]
    Unknown,
    Deployed,
    Uninstalled,
    Superseded,
    Failed,
    Uninstalling,
    PendingInstall,
    PendingUpgrade,
    PendingRollback,
    Other(String),
}

impl ReleaseStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "" | "unknown" => ReleaseStatus::Unknown,
            "deployed" => ReleaseStatus::Deployed,
            "uninstalled" => ReleaseStatus::Uninstalled,
            "superseded" => ReleaseStatus::Superseded,
            "failed" => ReleaseStatus::Failed,
            "uninstalling" => ReleaseStatus::Uninstalling,
            "pending-install" => ReleaseStatus::PendingInstall,
            "pending-upgrade" => ReleaseStatus::PendingUpgrade,
            "pending-rollback" => ReleaseStatus::PendingRollback,
            other => ReleaseStatus::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ReleaseStatus::Unknown => "unknown",
            ReleaseStatus::Deployed => "deployed",
            ReleaseStatus::Uninstalled => "uninstalled",
            ReleaseStatus::Superseded => "superseded",
            ReleaseStatus::Failed => "failed",
            ReleaseStatus::Uninstalling => "uninstalling",
            ReleaseStatus::PendingInstall => "pending-install",
            ReleaseStatus::PendingUpgrade => "pending-upgrade",
            ReleaseStatus::PendingRollback => "pending-rollback",
            ReleaseStatus::Other(s) => s,
        }
    }

    /// `pending-install`, `pending-upgrade` or `pending-rollback`: Helm holds its lock.
    pub fn is_pending(&self) -> bool {
        matches!(
            self,
            ReleaseStatus::PendingInstall | ReleaseStatus::PendingUpgrade | ReleaseStatus::PendingRollback
        )
    }
}

impl fmt::Display for ReleaseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReleaseStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ReleaseStatus::parse(&s))
    }
}

impl Serialize for ReleaseStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Helm 3 writes `""` for a zero time, Helm 4 omits it, and very old releases may carry Go's
/// zero time; all three mean "not set".
fn helm_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(s) if s.starts_with("0001-01-01T00:00:00") => Ok(None),
        Some(s) => s
            .parse::<Timestamp>()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("time {s:?} is not RFC 3339: {e}"))),
    }
}

/// Why a record could not be decoded. The message names the layer that failed, so a person
/// can tell a truncated write from a record some other tool wrote.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("the release payload is empty")]
    Empty,
    #[error("the release payload is not valid base64: {0}")]
    Base64(String),
    #[error("the release payload is truncated: the gzip stream ends early")]
    TruncatedGzip,
    #[error("the release payload is not valid gzip: {0}")]
    Gzip(String),
    #[error("the release payload is neither gzip nor JSON (it starts with {0})")]
    NotJson(String),
    #[error("the release JSON is malformed at line {line}, column {column}: {detail}")]
    Json { line: usize, column: usize, detail: String },
    #[error("the release JSON ends early (line {line}, column {column})")]
    TruncatedJson { line: usize, column: usize },
    #[error("the release JSON has the wrong shape at line {line}, column {column}: {detail}")]
    Shape { line: usize, column: usize, detail: String },
}

const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layer {
    Base64,
    Gzip,
}

/// Passes reads through, and remembers which layer failed: serde_json only sees an I/O error.
struct Tagged<R> {
    inner: R,
    layer: Layer,
    failed: Rc<Cell<Option<Layer>>>,
}

impl<R: Read> Read for Tagged<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| {
            if self.failed.get().is_none() {
                self.failed.set(Some(self.layer));
            }
        })
    }
}

/// Decodes one record's `data.release` as Helm stores it: for a Secret, the bytes after
/// Kubernetes' own base64 is undone; for a ConfigMap, the string's bytes.
pub fn decode_release(payload: &[u8]) -> Result<Release, DecodeError> {
    let payload = payload.trim_ascii();
    if payload.is_empty() {
        return Err(DecodeError::Empty);
    }
    let failed = Rc::new(Cell::new(None));
    let b64 = Tagged {
        inner: base64::read::DecoderReader::new(payload, &base64::engine::general_purpose::STANDARD),
        layer: Layer::Base64,
        failed: failed.clone(),
    };
    let mut raw = BufReader::with_capacity(64 * 1024, b64);
    let head = raw.fill_buf().map_err(|e| DecodeError::Base64(io_detail(&e)))?;
    if head.len() >= 3 && head[..3] == GZIP_MAGIC {
        let gz = Tagged {
            inner: flate2::bufread::GzDecoder::new(raw),
            layer: Layer::Gzip,
            failed: failed.clone(),
        };
        parse_json(BufReader::with_capacity(64 * 1024, gz), &failed)
    } else {
        let first = head.iter().find(|b| !b.is_ascii_whitespace()).copied();
        if first != Some(b'{') {
            return Err(DecodeError::NotJson(describe_start(head)));
        }
        parse_json(raw, &failed)
    }
}

fn parse_json<R: Read>(reader: R, failed: &Cell<Option<Layer>>) -> Result<Release, DecodeError> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let result = de.deserialize_map(ObjectOnly).and_then(|r| de.end().map(|_| r));
    result.map_err(|e| {
        use serde_json::error::Category;
        let (line, column) = (e.line(), e.column());
        match e.classify() {
            Category::Io => match failed.get() {
                Some(Layer::Base64) => DecodeError::Base64(inner_detail(&e)),
                _ if e.io_error_kind() == Some(io::ErrorKind::UnexpectedEof) => DecodeError::TruncatedGzip,
                _ => DecodeError::Gzip(inner_detail(&e)),
            },
            Category::Eof => DecodeError::TruncatedJson { line, column },
            Category::Syntax => DecodeError::Json { line, column, detail: strip_position(&e.to_string()) },
            Category::Data => DecodeError::Shape { line, column, detail: strip_position(&e.to_string()) },
        }
    })
}

/// A release must be a JSON object: serde's derive would also take a JSON array as a struct.
struct ObjectOnly;

impl<'de> serde::de::Visitor<'de> for ObjectOnly {
    type Value = Release;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a release object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Release, A::Error> {
        Release::deserialize(serde::de::value::MapAccessDeserializer::new(map))
    }
}

fn io_detail(e: &io::Error) -> String {
    e.get_ref().map_or_else(|| e.to_string(), |inner| inner.to_string())
}

fn inner_detail(e: &serde_json::Error) -> String {
    use std::error::Error as _;
    e.source().map_or_else(|| strip_position(&e.to_string()), |s| s.to_string())
}

/// serde_json appends " at line L column C"; the error variants carry those apart.
fn strip_position(msg: &str) -> String {
    msg.rsplit_once(" at line ").map_or(msg, |(m, _)| m).to_string()
}

fn describe_start(head: &[u8]) -> String {
    let shown: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
    if shown.is_empty() { "nothing".to_string() } else { format!("bytes {}", shown.join(" ")) }
}

/// Encodes a release JSON the way Helm does (gzip, then standard base64). For tests,
/// benchmarks and fuzz seeds.
pub fn encode_release_json(json: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(json).expect("writing to a Vec cannot fail");
    let compressed = gz.finish().expect("writing to a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(compressed).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.encode(bytes).into_bytes()
    }

    const HELM3_JSON: &str = r#"{"name":"shop","info":{"first_deployed":"2026-11-20T10:00:00.123456789Z",
      "last_deployed":"2026-11-21T11:30:00.5+01:00","deleted":"","description":"Upgrade complete",
      "status":"deployed","notes":"hello"},
      "chart":{"metadata":{"name":"fullstack","version":"1.0.0","appVersion":"2.4.1","apiVersion":"v2"},
        "lock":null,"templates":[{"name":"templates/a.yaml","data":"YWJj"}],"values":{"a":1},
        "schema":null,"files":[]},
      "config":{"secret":{"password":"hunter2"}},
      "manifest":"---\n# Source: fullstack/templates/cm.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n",
      "hooks":[{"name":"m","kind":"Job","path":"fullstack/templates/hooks.yaml","manifest":"x",
        "events":["pre-install"],"last_run":{"started_at":"","completed_at":"","phase":""},
        "delete_policies":["before-hook-creation"]}],
      "version":3,"namespace":"prod","future_field":{"x":1}}"#;

    #[test]
    fn decodes_a_helm3_record() {
        let r = decode_release(&encode_release_json(HELM3_JSON.as_bytes())).unwrap();
        assert_eq!(r.name, "shop");
        assert_eq!(r.namespace, "prod");
        assert_eq!(r.version, 3);
        assert_eq!(r.info.status, ReleaseStatus::Deployed);
        assert_eq!(r.info.description, "Upgrade complete");
        assert_eq!(r.info.deleted, None);
        assert_eq!(r.info.first_deployed.unwrap().to_string(), "2026-11-20T10:00:00.123456789Z");
        assert_eq!(r.info.last_deployed.unwrap().to_string(), "2026-11-21T10:30:00.5Z");
        assert_eq!(r.chart.metadata.name, "fullstack");
        assert_eq!(r.chart.metadata.version, "1.0.0");
        assert_eq!(r.chart.metadata.app_version, "2.4.1");
        assert!(r.manifest.starts_with("---\n# Source: fullstack/templates/cm.yaml\n"));
        assert_eq!(r.hooks.len(), 1);
        assert_eq!(r.hooks[0].events, vec!["pre-install"]);
        assert_eq!(r.hooks[0].last_run.started_at, None);
        assert_eq!(r.apply_method, ApplyMethod::Csa);
    }

    #[test]
    fn decodes_plain_json_records_too() {
        let r = decode_release(&b64(HELM3_JSON.as_bytes())).unwrap();
        assert_eq!(r.version, 3);
    }

    #[test]
    fn helm4_omitted_times_and_apply_method() {
        let json = r#"{"name":"a","info":{"status":"pending-upgrade"},"version":1,"apply_method":"ssa"}"#;
        let r = decode_release(&encode_release_json(json.as_bytes())).unwrap();
        assert_eq!(r.info.first_deployed, None);
        assert_eq!(r.info.status, ReleaseStatus::PendingUpgrade);
        assert!(r.info.status.is_pending());
        assert_eq!(r.apply_method, ApplyMethod::Ssa);
    }

    #[test]
    fn go_zero_time_means_unset() {
        let json = r#"{"info":{"deleted":"0001-01-01T00:00:00Z","status":"deployed"}}"#;
        let r = decode_release(&encode_release_json(json.as_bytes())).unwrap();
        assert_eq!(r.info.deleted, None);
    }

    #[test]
    fn unknown_status_is_kept() {
        let json = r#"{"info":{"status":"paused"}}"#;
        let r = decode_release(&encode_release_json(json.as_bytes())).unwrap();
        assert_eq!(r.info.status, ReleaseStatus::Other("paused".into()));
        assert_eq!(r.info.status.to_string(), "paused");
    }

    #[test]
    fn user_values_never_show_in_debug() {
        let r = decode_release(&encode_release_json(HELM3_JSON.as_bytes())).unwrap();
        let shown = format!("{r:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("UserValues(redacted, 1 top-level keys)"));
    }

    #[test]
    fn empty_payload() {
        assert_eq!(decode_release(b""), Err(DecodeError::Empty));
        assert_eq!(decode_release(b"  \n"), Err(DecodeError::Empty));
    }

    #[test]
    fn not_base64() {
        let e = decode_release(b"H4sI!!!not base64***").unwrap_err();
        assert!(matches!(e, DecodeError::Base64(_)), "{e:?}");
        assert!(e.to_string().starts_with("the release payload is not valid base64"), "{e}");
    }

    #[test]
    fn base64_error_deep_in_a_gzip_record() {
        let mut p = encode_release_json(HELM3_JSON.as_bytes());
        let mid = p.len() / 2;
        p[mid] = b'*';
        let e = decode_release(&p).unwrap_err();
        assert!(matches!(e, DecodeError::Base64(_)), "{e:?}");
    }

    #[test]
    fn truncated_gzip() {
        let full = encode_release_json(HELM3_JSON.as_bytes());
        let raw = base64::engine::general_purpose::STANDARD.decode(&full).unwrap();
        let cut = b64(&raw[..raw.len() * 2 / 3]);
        assert_eq!(decode_release(&cut), Err(DecodeError::TruncatedGzip));
    }

    #[test]
    fn corrupt_gzip() {
        let full = encode_release_json(HELM3_JSON.as_bytes());
        let mut raw = base64::engine::general_purpose::STANDARD.decode(&full).unwrap();
        for b in raw.iter_mut().skip(12).take(40) {
            *b ^= 0x5a;
        }
        let e = decode_release(&b64(&raw)).unwrap_err();
        assert!(matches!(e, DecodeError::Gzip(_) | DecodeError::TruncatedGzip), "{e:?}");
        assert!(e.to_string().contains("gzip"), "{e}");
    }

    #[test]
    fn neither_gzip_nor_json() {
        let e = decode_release(&b64(b"PK\x03\x04zipfile")).unwrap_err();
        assert_eq!(e, DecodeError::NotJson("bytes 50 4b 03 04".into()));
        assert!(e.to_string().contains("neither gzip nor JSON"));
    }

    #[test]
    fn malformed_json() {
        let e = decode_release(&encode_release_json(b"{\"name\": \"a\",\n \"info\": {status}}")).unwrap_err();
        assert!(matches!(e, DecodeError::Json { line: 2, .. }), "{e:?}");
    }

    #[test]
    fn truncated_json() {
        let e = decode_release(&encode_release_json(br#"{"name":"a","info":{"status":"dep"#)).unwrap_err();
        assert!(matches!(e, DecodeError::TruncatedJson { .. }), "{e:?}");
    }

    #[test]
    fn trailing_garbage_after_json() {
        let e = decode_release(&encode_release_json(br#"{"name":"a"} {"#)).unwrap_err();
        assert!(matches!(e, DecodeError::Json { .. }), "{e:?}");
    }

    #[test]
    fn json_of_the_wrong_shape() {
        for bad in [
            r#"{"version":"three"}"#,
            r#"{"info":{"last_deployed":"yesterday"}}"#,
            r#"{"hooks":{"not":"a list"}}"#,
            r#"{"manifest":42}"#,
            r#"["a","list"]"#,
        ] {
            let e = decode_release(&encode_release_json(bad.as_bytes())).unwrap_err();
            assert!(matches!(e, DecodeError::Shape { .. }), "{bad}: {e:?}");
        }
    }
}
