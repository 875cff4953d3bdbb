//! Image storage through `object_store`: the local filesystem by default,
//! S3 and S3-compatible stores by URL (`s3://bucket[/prefix]`).
//! Keys are `{org}/{yyyy}/{mm}/{dd}/{uuid}.png`, beside prefixes of the
//! store's own (`RESERVED_PREFIXES`) that no organisation may be named.
//!
//! Links: stores that can presign (S3) hand out presigned GET URLs; the
//! filesystem store's images are served by this service behind HMAC links.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::media::types::OutputFormat;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("image not found")]
    NotFound,
    #[error("invalid image key")]
    InvalidKey,
    #[error("already exists")]
    AlreadyExists,
    #[error("object of {size} bytes is over the limit of {limit}")]
    TooLarge { size: u64, limit: usize },
    #[error("storage failed: {0}")]
    Backend(#[from] object_store::Error),
}

/// Where generated images live.
#[derive(Clone)]
pub struct ImageStore {
    store: Arc<dyn ObjectStore>,
    /// Presigns GET links when the store can (S3).
    presigner: Option<Arc<dyn Signer>>,
    /// Whether the store keeps `Content-Type` (the filesystem store does not).
    content_type: bool,
    description: String,
}

impl ImageStore {
    /// Opens a store from a URL: `file:///path` (or a bare path),
    /// `s3://bucket` configured by the standard `AWS_*` variables
    /// (`AWS_ENDPOINT` and `AWS_ALLOW_HTTP` for S3-compatible stores), or
    /// `gs://bucket` configured by the `GOOGLE_*` variables (a service account
    /// key, `GOOGLE_SERVICE_ACCOUNT`, signs the links).
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        if let Some(rest) = url.strip_prefix("gs://").or_else(|| url.strip_prefix("gcs://")) {
            let bucket = bucket_of(url, rest)?;
            return Self::gcs(url, GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            bucket_of(url, rest)?;
            let s3 = AmazonS3Builder::from_env()
                .with_url(url)
                .build()
                .map_err(|e| anyhow::anyhow!("GATEWAY_STORAGE_URL {url:?}: {e}"))?;
            return Ok(Self::presigning(url, s3));
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        anyhow::ensure!(
            !path.contains("://"),
            "storage URL {url:?} is not supported; use file:///absolute/path, s3://bucket or gs://bucket"
        );
        std::fs::create_dir_all(path).map_err(|e| anyhow::anyhow!("cannot create image directory {path:?}: {e}"))?;
        let store = LocalFileSystem::new_with_prefix(path)?;
        Ok(Self {
            store: Arc::new(store),
            presigner: None,
            content_type: false,
            description: format!("file://{path}"),
        })
    }

    /// A GCS bucket; links are V4-signed with the service account's key.
    fn gcs(url: &str, builder: GoogleCloudStorageBuilder) -> anyhow::Result<Self> {
        let gcs = builder
            .build()
            .map_err(|e| anyhow::anyhow!("GATEWAY_STORAGE_URL {url:?}: {e}"))?;
        Ok(Self::presigning(url, gcs))
    }

    /// A cloud store that presigns its links and keeps content types.
    fn presigning<S: ObjectStore + Signer>(url: &str, store: S) -> Self {
        let store = Arc::new(store);
        Self {
            store: store.clone(),
            presigner: Some(store),
            content_type: true,
            description: url.to_string(),
        }
    }

    /// This store with links served by the gateway, not presigned by the store.
    pub fn without_presigning(mut self) -> Self {
        self.presigner = None;
        self
    }

    /// Wraps any object store (tests, other backends).
    pub fn new(store: Arc<dyn ObjectStore>, description: impl Into<String>) -> Self {
        Self {
            store,
            presigner: None,
            content_type: false,
            description: description.into(),
        }
    }

    /// The origin (`scheme://host[:port]`) of this store's presigned links
    /// and uploads, when it presigns: a content policy must allow it.
    /// Signing is local, so asking costs no request.
    pub async fn presigned_origin(&self) -> Option<String> {
        let signer = self.presigner.as_ref()?;
        let url = signer
            .signed_url(
                object_store::signer::Method::GET,
                &Path::from("origin"),
                Duration::from_secs(60),
            )
            .await
            .ok()?;
        Some(url.origin().ascii_serialization())
    }

    /// A presigned GET URL for `key`, valid for `ttl`; `None` for stores that cannot presign.
    pub async fn presigned_url(&self, key: &str, ttl: Duration) -> Result<Option<String>, StorageError> {
        let Some(signer) = &self.presigner else { return Ok(None) };
        let url = signer
            .signed_url(object_store::signer::Method::GET, &parse_key(key)?, ttl)
            .await?;
        Ok(Some(url.to_string()))
    }

    /// The object store itself, for this module's siblings (`erasure`).
    pub(crate) fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// The key a new image of `org` in `format` gets at time `now`.
    pub fn new_key(org: &str, now: DateTime<Utc>, format: OutputFormat) -> String {
        format!(
            "{}/{}/{}.{}",
            org,
            now.format("%Y/%m/%d"),
            uuid::Uuid::new_v4(),
            format.extension()
        )
    }

    /// Stores all images of one generation, or none: on any failure the
    /// images already written are deleted again. Each is recorded under
    /// its owner (`erasure`) alongside, so erasure on request finds it: an
    /// image whose record failed is deleted like one that failed itself.
    pub async fn put_all(
        &self,
        org: &str,
        user: &str,
        images: &[(PutPayload, OutputFormat)],
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StorageError> {
        let mut keys = Vec::with_capacity(images.len());
        for (payload, format) in images {
            let key = Self::new_key(org, now, *format);
            let path = parse_key(&key)?;
            let mut options = PutOptions::default();
            if self.content_type {
                let mut attributes = Attributes::new();
                attributes.insert(Attribute::ContentType, format.mime_type().into());
                options.attributes = attributes;
            }
            // Both writes at once: the record costs no extra wait.
            let (marked, stored) = tokio::join!(
                self.mark_image(org, user, &key),
                self.store.put_opts(&path, payload.clone(), options)
            );
            keys.push(key);
            if let Err(error) = stored.map_err(StorageError::from).and(marked) {
                self.delete_all(&keys).await;
                return Err(error);
            }
        }
        Ok(keys)
    }

    /// Deletes images again (a generation that could not be completed).
    pub async fn delete_all(&self, keys: &[String]) {
        for key in keys {
            if let Ok(path) = parse_key(key) {
                if let Err(error) = self.store.delete(&path).await {
                    tracing::warn!(%key, %error, "could not delete a partially stored generation");
                }
            }
        }
    }

    /// Deletes every image last modified before `cutoff`, and every upload
    /// before `uploads_cutoff` (retention: images are personal data and are
    /// kept for less than 30 days; uploads only as long as an edit needs
    /// them). Returns how many were deleted.
    pub async fn sweep(
        &self,
        cutoff: DateTime<Utc>,
        uploads_cutoff: DateTime<Utc>,
        audit_cutoff: DateTime<Utc>,
    ) -> Result<usize, StorageError> {
        use futures::TryStreamExt;
        let expired: Vec<Path> = self
            .store
            .list(None)
            .try_filter(|meta| {
                let key = meta.location.as_ref();
                // Audit segments keep a retention of their own (SOC 2's lookback).
                let limit = if key.starts_with(AUDIT_PREFIX) {
                    audit_cutoff
                } else if key.starts_with(UPLOADS_PREFIX) {
                    uploads_cutoff
                } else {
                    cutoff
                };
                futures::future::ready(meta.last_modified < limit)
            })
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?;
        for path in &expired {
            self.store.delete(path).await?;
        }
        Ok(expired.len())
    }

    /// Writes (or writes again, as it grows) an audit segment.
    pub async fn put_audit(&self, key: &str, text: Bytes) -> Result<(), StorageError> {
        self.store.put(&audit_path(key)?, text.into()).await?;
        Ok(())
    }

    /// Every audit segment's key; with `since`, only those written since
    /// then (a segment last written earlier holds only earlier events).
    pub async fn audit_segments(&self, since: Option<DateTime<Utc>>) -> Result<Vec<String>, StorageError> {
        use futures::TryStreamExt;
        let prefix = Path::from("audit");
        Ok(self
            .store
            .list(Some(&prefix))
            .try_filter(|meta| futures::future::ready(since.is_none_or(|since| meta.last_modified >= since)))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await?)
    }

    pub async fn get_audit(&self, key: &str) -> Result<Bytes, StorageError> {
        self.read(&audit_path(key)?).await
    }

    /// Writes a task record (`tasks/{org}/{task_id}.json`): shared by every
    /// replica, so any of them answers `tasks/get`.
    pub async fn put_task(&self, org: &str, task_id: &str, record: Bytes) -> Result<(), StorageError> {
        let path = task_path(org, task_id)?;
        self.store.put(&path, PutPayload::from(record)).await?;
        Ok(())
    }

    /// Writes the lease of a running task (`tasks/{org}/{task_id}.lease`).
    pub async fn put_task_lease(&self, org: &str, task_id: &str, lease: Bytes) -> Result<(), StorageError> {
        let path = task_lease_path(org, task_id)?;
        self.store.put(&path, PutPayload::from(lease)).await?;
        Ok(())
    }

    /// Reads the lease of a task of `org`.
    pub async fn get_task_lease(&self, org: &str, task_id: &str) -> Result<Bytes, StorageError> {
        self.read(&task_lease_path(org, task_id)?).await
    }

    /// Records how a task ended, once: the first of its completion, a
    /// cancellation or a lapse settlement to create the end (`PutMode::Create`,
    /// which every store here supports) decides, and its record is copied
    /// over the task's; a later one gets the end in force
    /// (`TaskEnd::AlreadyEnded`) and writes nothing of its own. A task erased
    /// meanwhile (its tombstone, checked after writing) is removed again.
    pub async fn finish_task(
        &self,
        org: &str,
        task_id: &str,
        created: DateTime<Utc>,
        record: Bytes,
    ) -> Result<TaskEnd, StorageError> {
        let end = task_end_path(org, task_id)?;
        let ended = match self
            .store
            .put_opts(&end, PutPayload::from(record.clone()), PutMode::Create.into())
            .await
        {
            Ok(_) => {
                self.put_task(org, task_id, record).await?;
                TaskEnd::Recorded
            }
            Err(object_store::Error::AlreadyExists { .. }) => match self.read(&end).await {
                Ok(winner) => {
                    // The winner may have stopped before copying it: the record follows its end.
                    self.put_task(org, task_id, winner.clone()).await?;
                    TaskEnd::AlreadyEnded(winner)
                }
                Err(StorageError::NotFound) => TaskEnd::Erased,
                Err(error) => return Err(error),
            },
            Err(error) => return Err(error.into()),
        };
        // After the writes, so an erasure that began before them is seen here
        // or else finds them itself (it writes its tombstone before deleting).
        if self.task_erased(org, task_id, created).await {
            self.forget_task(org, task_id).await?;
            return Ok(TaskEnd::Erased);
        }
        Ok(ended)
    }

    /// Reads a task record of `org`.
    pub async fn get_task(&self, org: &str, task_id: &str) -> Result<Bytes, StorageError> {
        self.read(&task_path(org, task_id)?).await
    }

    /// Reads an image.
    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        self.read(&parse_key(key)?).await
    }

    /// Reads an image of at most `limit` bytes (checked before reading it).
    pub async fn get_limited(&self, key: &str, limit: usize) -> Result<Bytes, StorageError> {
        self.read_limited(&parse_key(key)?, limit).await
    }

    /// Stores an upload once: a second write to the same id is refused
    /// (`AlreadyExists`), so an upload URL works one time.
    pub async fn put_upload(&self, org: &str, id: &str, bytes: Bytes, mime: &str) -> Result<(), StorageError> {
        let path = upload_path(org, id)?;
        let mut options = PutOptions::from(PutMode::Create);
        if self.content_type {
            let mut attributes = Attributes::new();
            attributes.insert(Attribute::ContentType, mime.to_string().into());
            options.attributes = attributes;
        }
        match self.store.put_opts(&path, PutPayload::from(bytes), options).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(StorageError::AlreadyExists),
            Err(error) => Err(error.into()),
        }
    }

    /// Reads an upload of `org` of at most `limit` bytes.
    pub async fn get_upload(&self, org: &str, id: &str, limit: usize) -> Result<Bytes, StorageError> {
        self.read_limited(&upload_path(org, id)?, limit).await
    }

    /// A presigned PUT URL for an upload, on stores that presign (S3, GCS):
    /// the bytes then go straight to the bucket.
    pub async fn presigned_upload_url(
        &self,
        org: &str,
        id: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StorageError> {
        let Some(signer) = &self.presigner else { return Ok(None) };
        let url = signer
            .signed_url(object_store::signer::Method::PUT, &upload_path(org, id)?, ttl)
            .await?;
        Ok(Some(url.to_string()))
    }

    async fn read_limited(&self, path: &Path, limit: usize) -> Result<Bytes, StorageError> {
        let meta = match self.store.head(path).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => return Err(StorageError::NotFound),
            Err(error) => return Err(error.into()),
        };
        if meta.size > limit as u64 {
            return Err(StorageError::TooLarge { size: meta.size, limit });
        }
        // The object may grow between `head` and `get` (a presigned PUT can be
        // replayed until it expires): count what is read, never trust the head.
        let mut stream = match self.store.get(path).await {
            Ok(result) => result.into_stream(),
            Err(object_store::Error::NotFound { .. }) => return Err(StorageError::NotFound),
            Err(error) => return Err(error.into()),
        };
        let mut bytes = Vec::with_capacity(meta.size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if bytes.len() + chunk.len() > limit {
                return Err(StorageError::TooLarge {
                    size: (bytes.len() + chunk.len()) as u64,
                    limit,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(bytes))
    }

    async fn read(&self, path: &Path) -> Result<Bytes, StorageError> {
        match self.store.get(path).await {
            Ok(result) => Ok(result.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(StorageError::NotFound),
            Err(error) => Err(error.into()),
        }
    }
}

/// A non-empty path segment of plain identifier characters, not starting
/// with a dot (no `..`, no hidden files, nothing a URL or shell would mangle).
pub fn is_safe_segment(value: &str) -> bool {
    !value.is_empty()
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'|' | b':'))
}

/// The bucket of `scheme://bucket` (`rest` is the part after the scheme);
/// images need a bucket of their own, so key prefixes are refused.
fn bucket_of<'a>(url: &str, rest: &'a str) -> anyhow::Result<&'a str> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    anyhow::ensure!(
        prefix.trim_matches('/').is_empty(),
        "GATEWAY_STORAGE_URL {url:?}: key prefixes are not supported; give images a bucket of their own"
    );
    Ok(bucket)
}

/// The image format of a stored key, from its extension.
pub fn format_of(key: &str) -> Option<OutputFormat> {
    let (_, extension) = key.rsplit_once('.')?;
    OutputFormat::from_extension(extension)
}

/// The storage key a resource URI names: `image://{key}`, or a link this
/// service returned (`…/images/{key}?…` or a presigned `…/{bucket}/{key}?…`):
/// the last five path segments, when they form a key of our shape.
pub fn key_in_uri(uri: &str) -> Option<String> {
    let path = match uri.strip_prefix("image://") {
        Some(key) => key,
        None => {
            let (_, rest) = uri.split_once("://")?;
            let path = rest.split_once('/').map(|(_, p)| p)?;
            path.split(['?', '#']).next()?
        }
    };
    let segments: Vec<&str> = path.split('/').collect();
    let key = segments.get(segments.len().checked_sub(5)?..)?.join("/");
    parse_key(&key).ok().map(|_| key)
}

/// Where a task record lives; the id must be a UUID we issued.
pub(super) fn task_path(org: &str, task_id: &str) -> Result<Path, StorageError> {
    if !is_safe_segment(org) || uuid::Uuid::parse_str(task_id).is_err() {
        return Err(StorageError::InvalidKey);
    }
    Path::parse(format!("tasks/{org}/{task_id}.json")).map_err(|_| StorageError::InvalidKey)
}

/// Where a task's lease lives, beside its record.
pub(super) fn task_lease_path(org: &str, task_id: &str) -> Result<Path, StorageError> {
    task_path(org, task_id)?;
    Path::parse(format!("tasks/{org}/{task_id}.lease")).map_err(|_| StorageError::InvalidKey)
}

/// Where a task's end lives, beside its record: created once (`finish_task`).
pub(super) fn task_end_path(org: &str, task_id: &str) -> Result<Path, StorageError> {
    task_path(org, task_id)?;
    Path::parse(format!("tasks/{org}/{task_id}.end")).map_err(|_| StorageError::InvalidKey)
}

/// How `finish_task` went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEnd {
    /// This end is the task's.
    Recorded,
    /// The task had already ended otherwise (cancelled, failed, completed): its record.
    AlreadyEnded(Bytes),
    /// The task was erased on request: nothing of it is kept.
    Erased,
}

/// The store's own top-level prefixes: everything under them is not an
/// organisation's images. An organisation named like one would share its
/// retention (`uploads`: a day; `audit`: 400 days) and its erasure, so the
/// edge refuses such callers (the filter's `org_names::RESERVED`, checked
/// equal by a test in `tests/`) and so does `identity`.
pub const RESERVED_PREFIXES: [&str; 6] = ["audit", "audit-prompts", "erased", "owners", "tasks", "uploads"];

/// Whether `org` names one of the store's own prefixes (in any case: a
/// case-insensitive filesystem would mix them).
pub fn is_reserved_org(org: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|prefix| prefix.eq_ignore_ascii_case(org))
}

/// Where uploads live: a prefix of their own, swept on a shorter retention.
const UPLOADS_PREFIX: &str = "uploads/";
const AUDIT_PREFIX: &str = "audit/";
/// A run's anchor, beside its segments (`audit_chain::anchor_key`).
const AUDIT_ANCHOR: &str = "anchor.json";

/// Where an audit segment lives (`audit/{replica}/{segment}.jsonl`), and
/// its run's anchor (`audit/{replica}/anchor.json`).
fn audit_path(key: &str) -> Result<Path, StorageError> {
    let safe = key
        .strip_prefix(AUDIT_PREFIX)
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(replica, file)| {
            is_safe_segment(replica) && is_safe_segment(file) && (file.ends_with(".jsonl") || file == AUDIT_ANCHOR)
        });
    if !safe {
        return Err(StorageError::InvalidKey);
    }
    Path::parse(key).map_err(|_| StorageError::InvalidKey)
}

/// Where an upload lives; the id must be a UUID we issued.
pub(super) fn upload_path(org: &str, id: &str) -> Result<Path, StorageError> {
    if !is_safe_segment(org) || uuid::Uuid::parse_str(id).is_err() {
        return Err(StorageError::InvalidKey);
    }
    Path::parse(format!("{UPLOADS_PREFIX}{org}/{id}")).map_err(|_| StorageError::InvalidKey)
}

/// Accepts only keys of the shape this service writes.
pub fn parse_key(key: &str) -> Result<Path, StorageError> {
    let segments: Vec<&str> = key.split('/').collect();
    let well_formed = segments.len() == 5 && segments.iter().all(|s| is_safe_segment(s)) && format_of(key).is_some();
    if !well_formed {
        return Err(StorageError::InvalidKey);
    }
    Path::parse(key).map_err(|_| StorageError::InvalidKey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[test]
    fn key_shape() {
        let now = DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let key = ImageStore::new_key("acme", now, OutputFormat::Png);
        assert!(key.starts_with("acme/2026/11/24/") && key.ends_with(".png"), "{key}");
        assert!(parse_key(&key).is_ok());
        let jpeg = ImageStore::new_key("acme", now, OutputFormat::Jpeg);
        assert_eq!(format_of(&jpeg), Some(OutputFormat::Jpeg));
        assert!(parse_key(&jpeg).is_ok() && jpeg.ends_with(".jpg"));
        assert!(parse_key(&ImageStore::new_key("acme", now, OutputFormat::Webp)).is_ok());
        for bad in [
            "../etc/passwd",
            "acme/2026/11/24/../x.png",
            "acme/x.png",
            "acme/2026/11/24/x.txt",
            "a//b/c/d.png",
            "acme/2026/11/24/.png",
        ] {
            assert!(parse_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_in_resource_uris() {
        let key = "acme/2026/11/24/0b8f6c1e-3a1f-4e0e-9d1c-5c0a2b7e9f10.png";
        for uri in [
            format!("image://{key}"),
            format!("http://127.0.0.1:8080/images/{key}?expires=1&sig=x"),
            format!("https://s3.example.com/bucket/{key}?X-Amz-Signature=abc"),
        ] {
            assert_eq!(key_in_uri(&uri).as_deref(), Some(key), "{uri}");
        }
        for bad in [
            "image://acme/x.png",
            "image://../2026/11/24/x.png",
            "https://h/images/acme/2026/11/24/x.txt",
            "not a uri",
            "file:///etc/passwd",
        ] {
            assert_eq!(key_in_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn storage_urls() {
        assert!(
            ImageStore::from_url("s3://bucket/prefix").is_err(),
            "prefixes are refused"
        );
        assert!(
            ImageStore::from_url("gs://bucket/prefix").is_err(),
            "prefixes are refused"
        );
        let gcs = ImageStore::gcs(
            "gs://images",
            GoogleCloudStorageBuilder::new().with_bucket_name("images"),
        )
        .unwrap();
        assert!(
            gcs.presigner.is_some() && gcs.content_type,
            "GCS presigns and keeps content types"
        );
        assert!(ImageStore::from_url("ftp://bucket").is_err());
        let dir = std::env::temp_dir().join(format!("store-{}", uuid::Uuid::new_v4()));
        let store = ImageStore::from_url(&format!("file://{}", dir.display())).unwrap();
        assert!(store.presigner.is_none(), "the filesystem store uses HMAC links");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn sweep_deletes_only_old_images() {
        let store = ImageStore::new(Arc::new(InMemory::new()), "memory");
        let keys = store
            .put_all(
                "acme",
                "ann",
                &[(PutPayload::from_static(b"a"), OutputFormat::Png)],
                Utc::now(),
            )
            .await
            .unwrap();
        let upload = uuid::Uuid::new_v4().to_string();
        store
            .put_upload("acme", &upload, Bytes::from_static(b"u"), "image/png")
            .await
            .unwrap();
        let old = Utc::now() - chrono::Duration::days(29);
        let keep = Utc::now() - chrono::Duration::days(400);
        store
            .put_audit("audit/r1/0000000000.jsonl", Bytes::from_static(b"{}\n"))
            .await
            .unwrap();
        assert_eq!(store.sweep(old, old, keep).await.unwrap(), 0);
        // Uploads go on their shorter retention; images stay.
        assert_eq!(
            store
                .sweep(old, Utc::now() + chrono::Duration::seconds(1), keep)
                .await
                .unwrap(),
            1
        );
        assert!(matches!(
            store.get_upload("acme", &upload, 10).await,
            Err(StorageError::NotFound)
        ));
        assert_eq!(store.get(&keys[0]).await.unwrap(), Bytes::from_static(b"a"));
        let later = Utc::now() + chrono::Duration::seconds(1);
        // The image and its owner record (`erasure`) go together.
        assert_eq!(store.sweep(later, later, keep).await.unwrap(), 2);
        assert!(matches!(store.get(&keys[0]).await, Err(StorageError::NotFound)));
        // Audit segments go on their own, longer retention.
        assert_eq!(store.audit_segments(None).await.unwrap(), ["audit/r1/0000000000.jsonl"]);
        assert_eq!(store.sweep(later, later, later).await.unwrap(), 1);
        assert!(store.audit_segments(None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn uploads_are_written_once_and_read_within_a_limit() {
        let store = ImageStore::new(Arc::new(InMemory::new()), "memory");
        let id = uuid::Uuid::new_v4().to_string();
        let bytes = Bytes::from_static(b"0123456789");
        store.put_upload("acme", &id, bytes.clone(), "image/png").await.unwrap();
        assert!(matches!(
            store.put_upload("acme", &id, bytes.clone(), "image/png").await,
            Err(StorageError::AlreadyExists)
        ));
        assert_eq!(store.get_upload("acme", &id, 10).await.unwrap(), bytes);
        assert!(matches!(
            store.get_upload("acme", &id, 9).await,
            Err(StorageError::TooLarge { size: 10, limit: 9 })
        ));
        assert!(matches!(
            store.get_upload("globex", &id, 10).await,
            Err(StorageError::NotFound)
        ));
        assert!(matches!(
            store.get_upload("acme", "../x", 10).await,
            Err(StorageError::InvalidKey)
        ));
    }

    /// The first end of a task is its end: a cancellation or a lapse
    /// settlement after a completion gets the completion, and the record says it.
    #[tokio::test]
    async fn a_task_ends_once() {
        let store = ImageStore::new(Arc::new(InMemory::new()), "memory");
        let task = uuid::Uuid::new_v4().to_string();
        let now = Utc::now();
        store
            .put_task("acme", &task, Bytes::from_static(b"working"))
            .await
            .unwrap();
        let done = Bytes::from_static(b"completed");
        assert_eq!(
            store.finish_task("acme", &task, now, done.clone()).await.unwrap(),
            TaskEnd::Recorded
        );
        for late in ["cancelled", "failed"] {
            assert_eq!(
                store.finish_task("acme", &task, now, Bytes::from(late)).await.unwrap(),
                TaskEnd::AlreadyEnded(done.clone())
            );
        }
        assert_eq!(store.get_task("acme", &task).await.unwrap(), done);
    }

    /// Every prefix the store writes outside organisations' images is reserved.
    #[test]
    fn the_stores_own_prefixes_are_reserved_organisation_names() {
        let id = uuid::Uuid::new_v4().to_string();
        let paths = [
            task_path("acme", &id).unwrap(),
            task_end_path("acme", &id).unwrap(),
            upload_path("acme", &id).unwrap(),
            audit_path("audit/r1/0000000000.jsonl").unwrap(),
        ];
        for path in paths {
            let top = path.as_ref().split('/').next().unwrap().to_string();
            assert!(is_reserved_org(&top), "{path}");
        }
        assert!(is_reserved_org("Uploads") && !is_reserved_org("acme"));
    }

    #[tokio::test]
    async fn round_trip_and_missing() {
        let store = ImageStore::new(Arc::new(InMemory::new()), "memory");
        let keys = store
            .put_all(
                "acme",
                "ann",
                &[
                    (PutPayload::from_static(b"a"), OutputFormat::Png),
                    (PutPayload::from_static(b"b"), OutputFormat::Webp),
                ],
                Utc::now(),
            )
            .await
            .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(store.get(&keys[1]).await.unwrap(), Bytes::from_static(b"b"));
        assert!(keys[1].ends_with(".webp"), "{}", keys[1]);
        let missing = ImageStore::new_key("acme", Utc::now(), OutputFormat::Png);
        assert!(matches!(store.get(&missing).await, Err(StorageError::NotFound)));
    }
}
