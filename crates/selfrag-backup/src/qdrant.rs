//! Qdrant server collections: snapshots created over gRPC (qdrant-client),
//! downloaded and uploaded over REST (reqwest).
//!
//! Qdrant serves gRPC on 6334 and REST on 6333. The client API creates,
//! lists and deletes snapshots; the file transfers use the REST endpoints
//! `GET /collections/{c}/snapshots/{s}` and
//! `POST /collections/{c}/snapshots/upload?priority=snapshot&wait=true`
//! (multipart field `snapshot`), which qdrant-client has no call for. The
//! `snapshot` priority makes the uploaded data win over whatever the node
//! has, which is what a restore onto a fresh node needs.
//!
//! Qdrant keeps an uploaded snapshot: it stores the upload in the
//! collection's snapshot directory under the multipart file name and
//! recovers from that file, which then stays there (a full copy of the
//! collection on the server's disk, listed among the collection's
//! snapshots). A restore therefore uploads under a name of its own
//! ([`restore_upload_name`]) and deletes that snapshot
//! (`DELETE /collections/{c}/snapshots/{s}`) once the server has answered;
//! retention deletes any such upload a restore could not
//! ([`snapshots_to_delete`]).

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use qdrant_client::qdrant::{CreateSnapshotRequest, DeleteSnapshotRequest, ListSnapshotsRequest};
use qdrant_client::Qdrant;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fsutil;
use crate::manifest::{check_entry_files, Entry, EntryKind, FileEntry, Manifest, QdrantInfo};
use crate::run::BackupRun;
use crate::{corrupt, io_err, Error, Result};

const QDRANT: &str = "qdrant";

/// Where a Qdrant server is and which collection to back up or restore.
///
/// `Debug` shows whether there is an API key, never the key, and the URLs
/// through [`redact_url`](selfrag_qdrant::redact_url).
#[derive(Clone, PartialEq, Eq)]
pub struct QdrantTarget {
    /// The gRPC URL (`http://host:6334`), as `QDRANT_URL` holds it. No user,
    /// password or query ([`validate_url`](selfrag_qdrant::validate_url)):
    /// the key goes in `api_key`.
    pub url: String,
    /// The REST URL (`http://host:6333`). Default: `url` with port 6334
    /// replaced by 6333 (or 6333 added when it has no port); set it when the
    /// ports are mapped differently. Checked like `url`.
    pub rest_url: Option<String>,
    /// API key, sent as the `api-key` header (gRPC and REST).
    pub api_key: Option<String>,
    /// The collection.
    pub collection: String,
    /// Timeout of each gRPC call and of each whole file transfer.
    /// Default: 1 hour (snapshots can be large).
    pub timeout: Duration,
    /// Backup: keep the snapshot on the server after it was downloaded and
    /// checked. Default: false (it is deleted: every snapshot is a full copy
    /// of the collection on the server's disk).
    pub keep_snapshot: bool,
    /// Restore: replace the collection when it already exists. Default:
    /// false (an existing collection is refused with [`Error::Conflict`]).
    pub replace: bool,
}

impl std::fmt::Debug for QdrantTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantTarget")
            .field("url", &selfrag_qdrant::redact_url(&self.url))
            .field("rest_url", &self.rest_url.as_deref().map(selfrag_qdrant::redact_url))
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("collection", &self.collection)
            .field("timeout", &self.timeout)
            .field("keep_snapshot", &self.keep_snapshot)
            .field("replace", &self.replace)
            .finish()
    }
}

impl QdrantTarget {
    /// The collection `collection` on the server at gRPC `url`.
    pub fn new(url: impl Into<String>, collection: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            rest_url: None,
            api_key: None,
            collection: collection.into(),
            timeout: Duration::from_secs(3600),
            keep_snapshot: false,
            replace: false,
        }
    }

    /// Sets [`QdrantTarget::keep_snapshot`].
    pub fn keep_snapshot(mut self, keep: bool) -> Self {
        self.keep_snapshot = keep;
        self
    }

    /// Sets [`QdrantTarget::replace`].
    pub fn replace(mut self, replace: bool) -> Self {
        self.replace = replace;
        self
    }

    /// Sets [`QdrantTarget::rest_url`].
    pub fn rest_url(mut self, url: impl Into<String>) -> Self {
        self.rest_url = Some(url.into());
        self
    }

    /// Sets [`QdrantTarget::api_key`].
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Sets [`QdrantTarget::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The REST base URL, without a trailing `/`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`rest_url`) when it cannot be derived, or
    /// [`validate_url`](selfrag_qdrant::validate_url) refuses it (`url` when
    /// it is derived from `url`).
    pub fn rest_base(&self) -> Result<String> {
        match &self.rest_url {
            Some(u) => {
                selfrag_qdrant::validate_url("rest_url", u)?;
                Ok(u.trim_end_matches('/').to_owned())
            }
            None => rest_from_grpc(&self.url),
        }
    }

    fn check(&self) -> Result<()> {
        check_name("collection", &self.collection)?;
        if let Some(key) = &self.api_key {
            api_key_header(key)?;
        }
        Ok(())
    }

    fn client(&self) -> Result<Qdrant> {
        // Also keeps credentials out of the URL the client quotes in its
        // connection errors.
        selfrag_qdrant::validate_url("url", &self.url)?;
        // qdrant-client quotes a key it cannot send in its errors.
        if let Some(key) = &self.api_key {
            selfrag_qdrant::validate_api_key(key)?;
        }
        let mut b = Qdrant::from_url(&self.url).timeout(self.timeout).skip_compatibility_check();
        if let Some(k) = &self.api_key {
            b = b.api_key(k.clone());
        }
        b.build().map_err(|e| {
            Error::invalid(
                "url",
                format!("cannot build a Qdrant client for {}: {e}", selfrag_qdrant::redact_url(&self.url)),
            )
        })
    }

    /// The client of every REST request. `https://` URLs use TLS (rustls)
    /// and verify the server against the system's root certificates, as
    /// qdrant-client does for gRPC.
    fn http(&self) -> Result<reqwest::Client> {
        reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::backend(QDRANT, "cannot build the HTTP client", false, e))
    }

    /// A REST request: every one the backup code sends is built here, so
    /// each carries the `api-key` header when there is a key (marked
    /// sensitive: no `Debug` of the request shows it).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`api_key`) for a key no HTTP header can
    /// carry (the key is not quoted).
    fn rest_request(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder> {
        let req = http.request(method, url);
        Ok(match &self.api_key {
            Some(key) => req.header(API_KEY_HEADER, api_key_header(key)?),
            None => req,
        })
    }

    /// `text` with the API key replaced by `***`: a server's or a proxy's
    /// error page may quote the request's headers, and its body goes into
    /// error messages.
    fn hide_key(&self, text: String) -> String {
        match self.api_key.as_deref() {
            Some(key) if !key.is_empty() && text.contains(key) => text.replace(key, "***"),
            _ => text,
        }
    }
}

/// The header Qdrant reads the API key from, on REST as on gRPC.
pub const API_KEY_HEADER: &str = "api-key";

/// The key as a header value, marked sensitive.
///
/// # Errors
/// [`Error::InvalidInput`] (`api_key`) as
/// [`validate_api_key`](selfrag_qdrant::validate_api_key) (the same rule
/// as for gRPC); the key is not quoted.
fn api_key_header(key: &str) -> Result<reqwest::header::HeaderValue> {
    selfrag_qdrant::validate_api_key(key)?;
    let mut value = reqwest::header::HeaderValue::from_str(key)
        .map_err(|_| Error::invalid("api_key", "cannot be sent as an HTTP header (the key is not shown)"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The REST URL for a gRPC URL: port 6334 becomes 6333; no port gets 6333.
///
/// # Errors
/// [`Error::InvalidInput`]: `rest_url` for another port (a mapped port
/// says nothing about the REST one), `url` for a URL
/// [`validate_url`](selfrag_qdrant::validate_url) refuses. No message
/// quotes anything but the port.
pub fn rest_from_grpc(url: &str) -> Result<String> {
    selfrag_qdrant::validate_url("url", url.trim())?;
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) =
        url.split_once("://").ok_or_else(|| Error::invalid("url", "has no scheme (http:// or https://)"))?;
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{p}")),
        None => (rest, String::new()),
    };
    // `[v6]:port`, `host:port` or `host`.
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (authority, None),
    };
    match port {
        None | Some("6333") => Ok(format!("{scheme}://{host}:6333{path}")),
        Some("6334") => Ok(format!("{scheme}://{host}:6333{path}")),
        Some(p) => Err(Error::invalid(
            "rest_url",
            format!(
                "cannot derive the REST port from gRPC port {p} in {}; set the REST URL (port 6333 by default)",
                selfrag_qdrant::redact_url(url)
            ),
        )),
    }
}

/// Collection and snapshot names go into URL paths: letters, digits, `-`,
/// `_`, `.` only (no percent-encoding surprises).
fn check_name(field: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(field, format!("`{name}` must be 1 to 255 of [A-Za-z0-9._-]")))
    }
}

/// `GET` URL of a snapshot file.
pub fn snapshot_download_url(rest_base: &str, collection: &str, snapshot: &str) -> String {
    format!("{}/collections/{collection}/snapshots/{snapshot}", rest_base.trim_end_matches('/'))
}

/// `POST` URL that uploads a snapshot and recovers `collection` from it,
/// with snapshot priority, waiting for the recovery, and with the SHA-256
/// the server must find (it refuses a mismatching upload).
pub fn snapshot_upload_url(rest_base: &str, collection: &str, sha256: Option<&str>) -> String {
    let mut url = format!(
        "{}/collections/{collection}/snapshots/upload?priority=snapshot&wait=true",
        rest_base.trim_end_matches('/')
    );
    if let Some(sum) = sha256 {
        url.push_str("&checksum=");
        url.push_str(sum);
    }
    url
}

/// `DELETE` URL of a snapshot of `collection`, waiting for the deletion.
pub fn snapshot_delete_url(rest_base: &str, collection: &str, snapshot: &str) -> String {
    format!("{}?wait=true", snapshot_download_url(rest_base, collection, snapshot))
}

fn grpc_err(what: &str, e: qdrant_client::QdrantError) -> Error {
    Error::unavailable(QDRANT, format!("{what}: {e}"), e)
}

fn http_err(what: &str, e: reqwest::Error) -> Error {
    Error::unavailable(QDRANT, format!("{what}: {e}"), e)
}

async fn http_status(target: &QdrantTarget, what: &str, resp: reqwest::Response) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = target.hide_key(resp.text().await.unwrap_or_default());
    let body: String = body.chars().take(2000).collect();
    let err = Error::Backend {
        backend: QDRANT,
        message: format!("{what}: HTTP {status}: {body}"),
        retryable: status.is_server_error(),
        source: None,
    };
    Err(if status.as_u16() == 404 {
        Error::NotFound { what: "qdrant resource", id: format!("{what}: {body}") }
    } else {
        err
    })
}

/// Creates a snapshot of the collection, downloads it into `run` as
/// `<name>.snapshot` (default name `qdrant-<collection>`), checks it against
/// the server's SHA-256 when the server gives one, and adds the entry (with
/// the server's version). The snapshot is then deleted from the server
/// unless [`QdrantTarget::keep_snapshot`]; kept ones are pruned by
/// [`prune_qdrant_snapshots`].
///
/// # Errors
/// [`Error::InvalidInput`] for bad names or URLs; [`Error::Unavailable`]
/// when the server cannot be reached; [`Error::NotFound`] for a missing
/// collection; [`Error::Incompatible`] when the download does not match the
/// server's checksum.
pub async fn backup_qdrant<'r>(run: &'r mut BackupRun, target: &QdrantTarget, name: Option<&str>) -> Result<&'r Entry> {
    let started = Instant::now();
    target.check()?;
    let name = name.map(str::to_owned).unwrap_or_else(|| format!("qdrant-{}", target.collection));
    run.check_new_entry(&name)?;
    let rest = target.rest_base()?;
    let client = target.client()?;
    let http = target.http()?;
    let health = client.health_check().await.map_err(|e| grpc_err("Qdrant health check", e))?;
    let created = client
        .create_snapshot(CreateSnapshotRequest { collection_name: target.collection.clone() })
        .await
        .map_err(|e| grpc_err(&format!("creating a snapshot of collection {}", target.collection), e))?;
    let description = created.snapshot_description.ok_or_else(|| Error::Backend {
        backend: QDRANT,
        message: "the server created a snapshot but did not describe it".into(),
        retryable: false,
        source: None,
    })?;
    check_name("snapshot", &description.name)?;

    let file_name = format!("{name}.snapshot");
    let path = run.dir().join(&file_name);
    let tmp = fsutil::temp_name(&path);
    let url = snapshot_download_url(&rest, &target.collection, &description.name);
    let downloaded =
        download(&http, target, &url, &tmp).await.and_then(|(size, sha256)| match description.checksum.as_deref() {
            Some(expected) if !expected.eq_ignore_ascii_case(&sha256) => Err(corrupt(format!(
                "snapshot {} downloaded with SHA-256 {sha256}, the server says {expected}",
                description.name
            ))),
            _ => Ok((size, sha256)),
        });
    if !target.keep_snapshot {
        let deleted = client
            .delete_snapshot(DeleteSnapshotRequest {
                collection_name: target.collection.clone(),
                snapshot_name: description.name.clone(),
            })
            .await;
        if let Err(e) = deleted {
            tracing::warn!(snapshot = %description.name, error = %e, "could not delete the server snapshot");
        }
    }
    let (size, sha256) = match downloaded {
        Ok(v) => v,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    fsutil::commit(&tmp, &path)?;
    let entry = Entry {
        kind: EntryKind::Qdrant,
        name,
        files: vec![FileEntry { path: file_name, size, sha256 }],
        postgres: None,
        qdrant: Some(QdrantInfo {
            collection: target.collection.clone(),
            snapshot: description.name,
            server_version: health.version,
            server_checksum: description.checksum,
        }),
        edge: None,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    Ok(run.push(entry))
}

/// Streams `url` into `tmp`, hashing; fsyncs. Returns size and SHA-256.
async fn download(http: &reqwest::Client, target: &QdrantTarget, url: &str, tmp: &Path) -> Result<(u64, String)> {
    let resp = target
        .rest_request(http, reqwest::Method::GET, url)?
        .send()
        .await
        .map_err(|e| http_err("downloading the snapshot", e))?;
    let resp = http_status(target, "downloading the snapshot", resp).await?;
    let mut file =
        tokio::fs::File::create(tmp).await.map_err(|e| io_err(format!("cannot create {}", tmp.display()), e))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| http_err("downloading the snapshot", e))?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(|e| io_err(format!("cannot write {}", tmp.display()), e))?;
    }
    file.sync_all().await.map_err(|e| io_err(format!("cannot fsync {}", tmp.display()), e))?;
    Ok((size, fsutil::hex(&hasher.finalize())))
}

/// What [`restore_qdrant`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QdrantRestoreReport {
    /// The entry restored.
    pub entry: String,
    /// The collection recovered.
    pub collection: String,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// The snapshot the server kept from the upload when the restore could
    /// not delete it (a warning was logged; retention deletes it after
    /// [`RESTORE_UPLOAD_GRACE`]). `None`: deleted, or not kept.
    pub leftover_snapshot: Option<String>,
}

/// Restores a Qdrant entry of the run in `run_dir` (`entry`: its name, or
/// `None` for the first one) into `target.collection` (Qdrant recovers the
/// collection from the snapshot with `priority=snapshot`). Before sending
/// anything: checks the manifest and the file's SHA-256; asks the server
/// (gRPC) for its version, refusing one older than the version that made
/// the snapshot (an older server may not read it); and refuses a
/// collection that already exists unless [`QdrantTarget::replace`] (the
/// recovery would silently replace live data). Sends the checksum along so
/// the server checks it too. The upload is streamed (multipart field
/// `snapshot`) under a fresh name ([`restore_upload_name`]); once the
/// server has answered (recovered or refused), the copy it keeps of the
/// upload is deleted, so a restore leaves no snapshot behind (see
/// [`QdrantRestoreReport::leftover_snapshot`] when that fails). When the
/// request itself fails (timeout, lost connection) the server may still be
/// recovering from the file, so it is left to retention.
///
/// # Errors
/// [`Error::Incompatible`] for a damaged backup or a server older than the
/// snapshot's; [`Error::Conflict`] for an existing collection without
/// `replace`; [`Error::NotFound`] for a missing manifest or entry;
/// [`Error::Unavailable`] when the server cannot be reached;
/// [`Error::Backend`] with the server's answer when it refuses.
pub async fn restore_qdrant(run_dir: &Path, entry: Option<&str>, target: &QdrantTarget) -> Result<QdrantRestoreReport> {
    let started = Instant::now();
    target.check()?;
    let manifest = Manifest::read(run_dir)?;
    let entry = match entry {
        Some(name) => manifest.entry(name)?,
        None => manifest.first_of(EntryKind::Qdrant)?,
    };
    let file = match (entry.kind, entry.files.as_slice()) {
        (EntryKind::Qdrant, [file]) => file,
        _ => return Err(Error::invalid("entry", format!("`{}` is not a Qdrant snapshot entry", entry.name))),
    };
    check_entry_files(run_dir, entry)?;
    let rest = target.rest_base()?;
    let http = target.http()?;
    let client = target.client()?;
    let health = client.health_check().await.map_err(|e| grpc_err("Qdrant health check", e))?;
    if let Some(info) = &entry.qdrant {
        check_server_version(&health.version, &info.server_version)?;
    }
    let exists = client
        .collection_exists(target.collection.clone())
        .await
        .map_err(|e| grpc_err(&format!("checking whether collection {} exists", target.collection), e))?;
    if exists && !target.replace {
        // "qdrant collection `c` already exists": the caller says how to
        // replace it (`QdrantTarget::replace`, the CLI's `--replace`).
        return Err(Error::Conflict { what: "qdrant collection", id: target.collection.clone() });
    }
    let path = run_dir.join(&file.path);
    // The server stores the upload under this name: a fresh one never
    // replaces a snapshot it holds, and says what to delete afterwards.
    let upload = restore_upload_name(uuid::Uuid::new_v4());
    let resp = upload_snapshot(&http, target, &rest, &path, file, &upload).await?;
    let recovered =
        http_status(target, &format!("recovering collection {} from the snapshot", target.collection), resp).await;
    // The server answered: with `wait=true` it is done with the file, so
    // the copy it kept can go, whether the recovery worked or not.
    let leftover_snapshot = match delete_snapshot_rest(&http, target, &rest, &upload).await {
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(snapshot = %upload, error = %e, "could not delete the snapshot uploaded for the restore");
            Some(upload)
        }
    };
    recovered?;
    Ok(QdrantRestoreReport {
        entry: entry.name.clone(),
        collection: target.collection.clone(),
        bytes: file.size,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        leftover_snapshot,
    })
}

/// Streams the snapshot file at `path` (as the manifest's `file` describes
/// it) to the server as multipart field `snapshot`, file name `upload`,
/// and asks it to recover the collection from it; returns the server's
/// answer, whatever its status.
async fn upload_snapshot(
    http: &reqwest::Client,
    target: &QdrantTarget,
    rest: &str,
    path: &Path,
    file: &FileEntry,
    upload: &str,
) -> Result<reqwest::Response> {
    let boundary = format!("selfrag-{}", uuid::Uuid::new_v4().simple());
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"snapshot\"; filename=\"{upload}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    let tail = format!("\r\n--{boundary}--\r\n").into_bytes();
    let length = head.len() as u64 + file.size + tail.len() as u64;
    let reader = tokio::fs::File::open(path).await.map_err(|e| io_err(format!("cannot open {}", path.display()), e))?;
    let body_stream = futures::stream::iter([Ok::<Vec<u8>, std::io::Error>(head)])
        .chain(file_chunks(reader))
        .chain(futures::stream::iter([Ok(tail)]));
    let url = snapshot_upload_url(rest, &target.collection, Some(&file.sha256));
    target
        .rest_request(http, reqwest::Method::POST, &url)?
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .header("content-length", length)
        .body(reqwest::Body::wrap_stream(body_stream))
        .send()
        .await
        .map_err(|e| http_err("uploading the snapshot", e))
}

/// Deletes snapshot `name` of the collection over REST. `Ok(false)` when
/// the server has no such snapshot (or no such collection, after a failed
/// recovery onto a new one: nothing reachable to delete).
async fn delete_snapshot_rest(http: &reqwest::Client, target: &QdrantTarget, rest: &str, name: &str) -> Result<bool> {
    let url = snapshot_delete_url(rest, &target.collection, name);
    let resp = target
        .rest_request(http, reqwest::Method::DELETE, &url)?
        .send()
        .await
        .map_err(|e| http_err(&format!("deleting snapshot {name}"), e))?;
    match http_status(target, &format!("deleting snapshot {name}"), resp).await {
        Ok(_) => Ok(true),
        Err(Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `1.12.4` (or `v1.12.4`, `1.13.0-rc1`) as numbers.
fn parse_version(v: &str) -> Option<Vec<u64>> {
    let v = v.trim().trim_start_matches('v');
    let core = v.split(['-', '+']).next()?;
    let parts: Vec<u64> = core.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    (!parts.is_empty()).then_some(parts)
}

/// Refuses a server older than the one that made the snapshot (Qdrant reads
/// snapshots of its own and older versions only), and versions that do not
/// read as versions (the check could not be made).
///
/// # Errors
/// [`Error::Incompatible`].
pub fn check_server_version(server: &str, recorded: &str) -> Result<()> {
    let unreadable = |what: &str, v: &str| Error::Incompatible {
        backend: QDRANT,
        message: format!("the {what} version {v:?} is not a version; cannot check that the server reads the snapshot"),
    };
    let have = parse_version(server).ok_or_else(|| unreadable("server", server))?;
    let need = parse_version(recorded).ok_or_else(|| unreadable("recorded server", recorded))?;
    if have < need {
        return Err(Error::Incompatible {
            backend: QDRANT,
            message: format!(
                "the Qdrant server is version {server}, older than the {recorded} that made the snapshot; \
                 restore onto Qdrant {recorded} or newer"
            ),
        });
    }
    Ok(())
}

/// The file in 256 KiB chunks.
fn file_chunks(file: tokio::fs::File) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    futures::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// A snapshot on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSnapshot {
    /// Its name.
    pub name: String,
    /// When it was created (`None` when the server did not say).
    pub created_at: Option<OffsetDateTime>,
    /// Its size in bytes.
    pub size: u64,
}

/// What [`prune_qdrant_snapshots`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotPruneReport {
    /// Snapshots deleted (or that would be, in a dry run).
    pub deleted: Vec<String>,
    /// Snapshots kept.
    pub kept: Vec<String>,
}

/// Start of the names under which [`restore_qdrant`] uploads snapshots
/// ([`restore_upload_name`]).
pub const RESTORE_UPLOAD_PREFIX: &str = "selfrag-restore-";

/// How long retention leaves a restore's upload on the server: 24 hours (a
/// restore may still be recovering from it, as a `.partial` run may still
/// be written).
pub const RESTORE_UPLOAD_GRACE: Duration = Duration::from_secs(24 * 3600);

/// The name a restore uploads its snapshot under:
/// `selfrag-restore-<uuid>.snapshot`. Qdrant keeps the upload under the
/// multipart file name and would move it over a snapshot of the same name,
/// so the name is fresh for every restore; its prefix tells retention that
/// the snapshot is no backup (server snapshots are named
/// `<collection>-<peer id>-<time>.snapshot`).
pub fn restore_upload_name(id: uuid::Uuid) -> String {
    format!("{RESTORE_UPLOAD_PREFIX}{}.snapshot", id.simple())
}

/// Whether a server snapshot is one a restore uploaded (see
/// [`restore_upload_name`]) rather than a backup.
pub fn is_restore_upload(name: &str) -> bool {
    name.strip_prefix(RESTORE_UPLOAD_PREFIX)
        .and_then(|rest| rest.strip_suffix(".snapshot"))
        .is_some_and(|id| uuid::Uuid::try_parse(id).is_ok())
}

/// Which snapshots retention deletes: backups created more than
/// `keep_days` before `now`, never the newest backup, never one without a
/// creation time; and snapshots a restore uploaded and could not delete
/// ([`is_restore_upload`]) once older than [`RESTORE_UPLOAD_GRACE`],
/// whatever `keep_days` (the run they came from holds the same file). An
/// upload is never taken for the newest backup.
pub fn snapshots_to_delete(snapshots: &[ServerSnapshot], keep_days: u32, now: OffsetDateTime) -> SnapshotPruneReport {
    let cutoff = now - Duration::from_secs(u64::from(keep_days) * 86_400);
    let upload_cutoff = now - RESTORE_UPLOAD_GRACE;
    let newest = snapshots
        .iter()
        .filter(|s| s.created_at.is_some() && !is_restore_upload(&s.name))
        .max_by_key(|s| s.created_at)
        .map(|s| &s.name);
    let mut report = SnapshotPruneReport::default();
    for s in snapshots {
        let delete = if is_restore_upload(&s.name) {
            s.created_at.is_some_and(|t| t < upload_cutoff)
        } else {
            s.created_at.is_some_and(|t| t < cutoff) && Some(&s.name) != newest
        };
        if delete {
            report.deleted.push(s.name.clone());
        } else {
            report.kept.push(s.name.clone());
        }
    }
    report
}

/// The collection's snapshots on the server.
///
/// # Errors
/// [`Error::Unavailable`] when the server cannot be reached.
pub async fn list_qdrant_snapshots(target: &QdrantTarget) -> Result<Vec<ServerSnapshot>> {
    target.check()?;
    let client = target.client()?;
    let list = client
        .list_snapshots(ListSnapshotsRequest { collection_name: target.collection.clone() })
        .await
        .map_err(|e| grpc_err(&format!("listing the snapshots of {}", target.collection), e))?;
    Ok(list
        .snapshot_descriptions
        .into_iter()
        .map(|d| ServerSnapshot {
            name: d.name,
            created_at: d.creation_time.and_then(|t| {
                OffsetDateTime::from_unix_timestamp(t.seconds)
                    .ok()
                    .map(|s| s + Duration::from_nanos(u64::try_from(t.nanos).unwrap_or(0)))
            }),
            size: u64::try_from(d.size).unwrap_or(0),
        })
        .collect())
}

/// Server-side retention: deletes the collection's snapshots older than
/// `keep_days` days, never the newest, and uploads restores left behind
/// after [`RESTORE_UPLOAD_GRACE`] (see [`snapshots_to_delete`]).
///
/// # Errors
/// [`Error::Unavailable`] when the server cannot be reached (snapshots
/// deleted before the failure stay deleted).
pub async fn prune_qdrant_snapshots(
    target: &QdrantTarget,
    keep_days: u32,
    now: OffsetDateTime,
    dry_run: bool,
) -> Result<SnapshotPruneReport> {
    let snapshots = list_qdrant_snapshots(target).await?;
    let report = snapshots_to_delete(&snapshots, keep_days, now);
    if !dry_run {
        let client = target.client()?;
        for name in &report.deleted {
            client
                .delete_snapshot(DeleteSnapshotRequest {
                    collection_name: target.collection.clone(),
                    snapshot_name: name.clone(),
                })
                .await
                .map_err(|e| grpc_err(&format!("deleting snapshot {name}"), e))?;
        }
    }
    Ok(report)
}

/// The server's version (`health_check`).
///
/// # Errors
/// [`Error::Unavailable`] when the server cannot be reached.
pub async fn qdrant_version(target: &QdrantTarget) -> Result<String> {
    let client = target.client()?;
    Ok(client.health_check().await.map_err(|e| grpc_err("Qdrant health check", e))?.version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn rest_urls() {
        assert_eq!(rest_from_grpc("http://localhost:6334").unwrap(), "http://localhost:6333");
        assert_eq!(rest_from_grpc("https://q.example/").unwrap(), "https://q.example:6333");
        assert_eq!(rest_from_grpc("http://[::1]:6334").unwrap(), "http://[::1]:6333");
        assert_eq!(rest_from_grpc("http://h:32768").unwrap_err().field(), Some("rest_url"));
        assert_eq!(rest_from_grpc("localhost:6334").unwrap_err().field(), Some("url"));
        let t = QdrantTarget::new("http://h:32768", "c").rest_url("http://h:32767/");
        assert_eq!(t.rest_base().unwrap(), "http://h:32767");
        assert!(!format!("{:?}", t.api_key("secret")).contains("secret"));
    }

    /// The key never shows; a URL with credentials or a query is refused
    /// before anything is sent, by a message that does not quote it, and
    /// `Debug` hides them.
    #[test]
    fn no_secret_in_debug_or_url_errors() {
        const PW: &str = "QdSecretKey";
        for url in [
            format!("http://u:{PW}@h:6334"),
            format!("http://:{PW}@h:6334"),
            format!("http://u:p@{PW}@h:6334"),
            format!("http://h:6334/?api-key={PW}"),
            format!("http://h:6334#{PW}"),
            format!("h:6334?api_key={PW}"),
        ] {
            let t = QdrantTarget::new(url.as_str(), "c").rest_url(url.as_str()).api_key(PW);
            let debug = format!("{t:?}");
            assert!(!debug.contains(PW), "{debug}");
            for err in
                [t.client().map(|_| ()).unwrap_err(), t.rest_base().unwrap_err(), rest_from_grpc(&url).unwrap_err()]
            {
                assert!(!format!("{err} {err:?}").contains(PW), "{url}: {err}");
            }
        }
    }

    #[test]
    fn endpoint_urls() {
        assert_eq!(
            snapshot_download_url("http://h:6333/", "chunks", "chunks-1.snapshot"),
            "http://h:6333/collections/chunks/snapshots/chunks-1.snapshot"
        );
        assert_eq!(
            snapshot_upload_url("http://h:6333", "chunks", Some("ab12")),
            "http://h:6333/collections/chunks/snapshots/upload?priority=snapshot&wait=true&checksum=ab12"
        );
        assert!(check_name("collection", "a/b").is_err());
        assert!(check_name("collection", "..").is_err());
        assert!(check_name("snapshot", "chunks-2025-01-01-12-00-00.snapshot").is_ok());
        assert_eq!(
            snapshot_delete_url("http://h:6333/", "chunks", "selfrag-restore-1.snapshot"),
            "http://h:6333/collections/chunks/snapshots/selfrag-restore-1.snapshot?wait=true"
        );
    }

    /// Issue 19: the upload a restore leaves on the server has a name of its
    /// own, fresh each time, that retention recognises and the URL paths
    /// accept; the names Qdrant gives its snapshots are never taken for one.
    #[test]
    fn restore_uploads_are_named_apart() {
        let a = restore_upload_name(uuid::Uuid::new_v4());
        let b = restore_upload_name(uuid::Uuid::new_v4());
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert!(check_name("snapshot", name).is_ok(), "{name}");
            assert!(is_restore_upload(name), "{name}");
            assert!(name.ends_with(".snapshot"), "{name}");
        }
        for other in [
            "chunks-5361389212380101-2026-01-01-02-15-00.snapshot",
            "selfrag-restore-2026-01-01-02-15-00.snapshot",
            "selfrag-restore-.snapshot",
            "qdrant-chunks.snapshot",
            // A collection named like the prefix: its server snapshots.
            "selfrag-restore-5361389212380101-2026-01-01-02-15-00.snapshot",
            a.trim_end_matches(".snapshot"),
        ] {
            assert!(!is_restore_upload(other), "{other}");
        }
    }

    /// Retention and restores agree: an upload a restore could not delete is
    /// no backup. It goes once older than the grace period whatever
    /// `keep_days`, stays while younger (a restore may be reading it), and
    /// never counts as the newest backup, which is kept.
    #[test]
    fn retention_deletes_restore_uploads_after_the_grace_period() {
        let now = datetime!(2025-06-30 12:00 UTC);
        let s = |name: &str, t: Option<OffsetDateTime>| ServerSnapshot { name: name.into(), created_at: t, size: 1 };
        let fresh = restore_upload_name(uuid::Uuid::new_v4());
        let stale = restore_upload_name(uuid::Uuid::new_v4());
        let undated = restore_upload_name(uuid::Uuid::new_v4());
        let all = vec![
            s("c-1-2025-06-01-00-00-00.snapshot", Some(datetime!(2025-06-01 0:00 UTC))),
            s("c-1-2025-06-20-00-00-00.snapshot", Some(datetime!(2025-06-20 0:00 UTC))),
            s(&stale, Some(datetime!(2025-06-29 11:00 UTC))),
            s(&fresh, Some(datetime!(2025-06-30 11:00 UTC))),
            s(&undated, None),
        ];
        // 30 days: both backups are young; the stale upload goes anyway.
        let r = snapshots_to_delete(&all, 30, now);
        assert_eq!(r.deleted, vec![stale.clone()]);
        assert_eq!(r.kept.len(), 4);
        // 0 days: the newest *backup* survives although an upload is newer.
        let r = snapshots_to_delete(&all, 0, now);
        assert_eq!(r.deleted, vec!["c-1-2025-06-01-00-00-00.snapshot".to_owned(), stale]);
        assert_eq!(r.kept, vec!["c-1-2025-06-20-00-00-00.snapshot".to_owned(), fresh.clone(), undated.clone()]);
        // Only uploads: none is protected as the newest backup.
        let old = restore_upload_name(uuid::Uuid::new_v4());
        let r = snapshots_to_delete(&[s(&old, Some(datetime!(2025-06-01 0:00 UTC)))], 30, now);
        assert_eq!(r.deleted, vec![old]);
        // What the server test sees after two kept backups and restores
        // that cleaned up: retention with 0 days deletes one, keeps one.
        let r = snapshots_to_delete(&all[..2], 0, now);
        assert_eq!((r.deleted.len(), r.kept.len()), (1, 1));
    }

    /// One request as a local listener received it.
    #[derive(Debug)]
    struct Received {
        method: String,
        target: String,
        headers: Vec<(String, String)>,
        body_len: usize,
    }

    impl Received {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }
    }

    /// A plain HTTP/1.1 listener on a free loopback port that records each
    /// request's method, target, headers and body length, and answers every
    /// one with `status` and `body`. It checks our client's requests, not
    /// Qdrant's behaviour: the answers are whatever a test needs.
    async fn recorder(status: u16, body: &'static str) -> (String, tokio::sync::mpsc::UnboundedReceiver<Received>) {
        use tokio::io::AsyncBufReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut reader = tokio::io::BufReader::new(socket);
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    let mut parts = line.split_whitespace();
                    let (method, target) = (parts.next().unwrap().to_owned(), parts.next().unwrap().to_owned());
                    let mut headers = Vec::new();
                    loop {
                        line.clear();
                        reader.read_line(&mut line).await.unwrap();
                        match line.trim_end().split_once(':') {
                            Some((k, v)) => headers.push((k.trim().to_owned(), v.trim().to_owned())),
                            None => break,
                        }
                    }
                    let length = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
                    let mut body_bytes = vec![0u8; length];
                    reader.read_exact(&mut body_bytes).await.unwrap();
                    let _ = tx.send(Received { method, target, headers, body_len: length });
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    reader.get_mut().write_all(answer.as_bytes()).await.unwrap();
                    reader.get_mut().shutdown().await.ok();
                });
            }
        });
        (base, rx)
    }

    fn file_entry(path: &Path) -> FileEntry {
        let data = std::fs::read(path).unwrap();
        FileEntry { path: "s.snapshot".into(), size: data.len() as u64, sha256: fsutil::hex(&Sha256::digest(&data)) }
    }

    /// Issue 13: every REST request the backup code sends (download, upload
    /// with recovery, delete) carries the `api-key` header, and none does
    /// without a key.
    #[tokio::test]
    async fn every_rest_request_carries_the_api_key() {
        const KEY: &str = "rest-key-0123456789";
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("s.snapshot");
        std::fs::write(&snapshot, vec![7u8; 300_000]).unwrap();
        let file = file_entry(&snapshot);
        for key in [Some(KEY), None] {
            let (base, mut rx) = recorder(200, "{}").await;
            let mut target = QdrantTarget::new("http://127.0.0.1:6334", "chunks").rest_url(base.as_str());
            if let Some(key) = key {
                target = target.api_key(key);
            }
            target.check().unwrap();
            let http = target.http().unwrap();
            let rest = target.rest_base().unwrap();
            let url = snapshot_download_url(&rest, "chunks", "c-1.snapshot");
            let (size, _) = download(&http, &target, &url, &dir.path().join("down.partial")).await.unwrap();
            assert_eq!(size, 2);
            let resp = upload_snapshot(&http, &target, &rest, &snapshot, &file, "u.snapshot").await.unwrap();
            assert!(resp.status().is_success());
            assert!(delete_snapshot_rest(&http, &target, &rest, "u.snapshot").await.unwrap());

            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push(rx.recv().await.unwrap());
            }
            let methods: Vec<&str> = seen.iter().map(|r| r.method.as_str()).collect();
            assert_eq!(methods, ["GET", "POST", "DELETE"]);
            for r in &seen {
                assert_eq!(r.header(API_KEY_HEADER), key, "{r:?}");
            }
            assert_eq!(seen[0].target, "/collections/chunks/snapshots/c-1.snapshot");
            assert!(seen[1].target.starts_with("/collections/chunks/snapshots/upload?priority=snapshot&wait=true"));
            assert!(seen[1].body_len as u64 > file.size, "the whole file and the multipart frame were sent");
            assert_eq!(seen[2].target, "/collections/chunks/snapshots/u.snapshot?wait=true");
        }
    }

    /// A server (or proxy) that quotes the request's key in its error page
    /// does not get it into our error.
    #[tokio::test]
    async fn an_error_page_quoting_the_key_is_not_repeated() {
        const KEY: &str = "echoed-key-0123456789";
        let (base, _rx) = recorder(403, "forbidden: api-key echoed-key-0123456789 is not valid").await;
        let target = QdrantTarget::new("http://127.0.0.1:6334", "chunks").rest_url(base.as_str()).api_key(KEY);
        let http = target.http().unwrap();
        let err = delete_snapshot_rest(&http, &target, &base, "u.snapshot").await.unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains(KEY), "{text}");
        assert!(text.contains("403") && text.contains("forbidden: api-key *** is not valid"), "{text}");
    }

    /// `https://` REST URLs speak TLS: the first bytes the server gets are a
    /// TLS handshake record (a plain-HTTP client would send `GET ...`), and
    /// no `api-key` ever crosses in clear text.
    #[tokio::test]
    async fn https_rest_urls_use_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let first = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 2048];
            let n = socket.read(&mut buf).await.unwrap();
            buf.truncate(n);
            buf
        });
        const KEY: &str = "tls-key-0123456789";
        let target = QdrantTarget::new("https://127.0.0.1:6334", "chunks")
            .rest_url(format!("https://127.0.0.1:{port}"))
            .api_key(KEY)
            .timeout(Duration::from_secs(5));
        let http = target.http().unwrap();
        let rest = target.rest_base().unwrap();
        assert!(rest.starts_with("https://"), "{rest}");
        let err = delete_snapshot_rest(&http, &target, &rest, "u.snapshot").await.unwrap_err();
        let bytes = first.await.unwrap();
        assert_eq!(bytes.first(), Some(&0x16), "a TLS handshake record, got {:?}", String::from_utf8_lossy(&bytes));
        assert!(!String::from_utf8_lossy(&bytes).contains(KEY));
        assert!(!format!("{err} {err:?}").contains(KEY));
        // The REST URL derived from an https gRPC URL keeps the scheme.
        assert_eq!(rest_from_grpc("https://q.example:6334").unwrap(), "https://q.example:6333");
    }

    /// A key no header can carry is refused before anything is sent,
    /// without being quoted; so is an empty one.
    #[test]
    fn unusable_keys_are_refused_without_an_echo() {
        for key in ["bad\nkey-0123456789", "bad\u{7f}key-0123456789", "bad key-0123456789", "", "  "] {
            let target = QdrantTarget::new("http://127.0.0.1:6334", "chunks").api_key(key);
            let err = target.check().unwrap_err();
            assert_eq!(err.field(), Some("api_key"));
            assert!(!format!("{err} {err:?}").contains("key-0123456789"), "{err}");
            let err = target.client().map(|_| ()).unwrap_err();
            assert_eq!(err.field(), Some("api_key"));
            let http = target.http().unwrap();
            let err = target.rest_request(&http, reqwest::Method::GET, "http://127.0.0.1:1/").unwrap_err();
            assert_eq!(err.field(), Some("api_key"));
        }
        // A sensitive header value does not show in the request's Debug.
        let target = QdrantTarget::new("http://127.0.0.1:6334", "chunks").api_key("debug-key-0123456789");
        let http = target.http().unwrap();
        let req = target.rest_request(&http, reqwest::Method::GET, "http://127.0.0.1:1/x").unwrap().build().unwrap();
        assert!(req.headers().get(API_KEY_HEADER).is_some_and(|v| v.is_sensitive()));
        assert!(!format!("{req:?}").contains("debug-key"), "{req:?}");
    }

    #[test]
    fn older_servers_are_refused() {
        assert!(check_server_version("1.12.4", "1.12.4").is_ok());
        assert!(check_server_version("1.13.0", "1.12.4").is_ok());
        assert!(check_server_version("1.12.10", "1.12.9").is_ok(), "numeric, not textual");
        let e = check_server_version("1.11.9", "1.12.0").unwrap_err();
        assert!(matches!(e, Error::Incompatible { .. }), "{e}");
        assert!(check_server_version("1.12.4", "garbled").is_err());
        assert!(check_server_version("v1.12.4", "1.12.4-rc1").is_ok());
    }

    #[test]
    fn snapshot_retention() {
        let now = datetime!(2025-06-30 12:00 UTC);
        let s = |name: &str, t: Option<OffsetDateTime>| ServerSnapshot { name: name.into(), created_at: t, size: 1 };
        let all = vec![
            s("old", Some(datetime!(2025-04-01 0:00 UTC))),
            s("older", Some(datetime!(2025-03-01 0:00 UTC))),
            s("recent", Some(datetime!(2025-06-29 0:00 UTC))),
            s("unknown", None),
        ];
        let r = snapshots_to_delete(&all, 30, now);
        assert_eq!(r.deleted, vec!["old", "older"]);
        assert_eq!(r.kept, vec!["recent", "unknown"]);
        // All old: the newest survives.
        let r = snapshots_to_delete(&all[..2], 30, now);
        assert_eq!((r.deleted, r.kept), (vec!["older".to_owned()], vec!["old".to_owned()]));
    }
}
