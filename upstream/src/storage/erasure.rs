//! Erasure on request (GDPR art. 17): who owns what, and removing it.
//!
//! Image keys name only the organisation, so every image, upload and task
//! is also recorded under its owner: `owners/{org}/{owner}/{kind}/{name}`,
//! the object's path as its body: written before an upload or task can
//! exist, and at the same time as an image, which is removed again if its
//! record fails (a record without an object is harmless; an object without
//! one could not be found). `{owner}` is a pseudonym of the user (`owner_id`), so the
//! index holds no user id. Erasing leaves tombstones under `erased/{org}/`
//! so that later links answer 410 Gone rather than 404; they, the markers
//! and the prompts kept apart from the audit (`audit-prompts/`) expire with
//! the images' retention.
//!
//! Work still running when its owner is erased must not bring anything
//! back: each tombstone is written before what it stands for is deleted,
//! and a writer that may outlive an erasure (a task's end, a kept prompt)
//! checks for one after writing and removes what it wrote. Either the
//! writer sees the tombstone, or its writes came before it and the erasure
//! deletes them. Tombstones: `{file}` per image, `{task_id}.task` per task,
//! `_owner-{owner}` per user (its time), `_org` per organisation (its time).

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::Serialize;

use super::store::{
    is_reserved_org, is_safe_segment, parse_key, task_end_path, task_lease_path, task_path, upload_path, ImageStore,
    StorageError,
};

/// The tombstone of a whole organisation's erasure.
const ORG_TOMBSTONE: &str = "_org";
/// Work that started up to this long after an erasure (by the erasing
/// host's clock) counts as started before it: clocks of hosts differ.
const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// What an owner can have in the store, by its folder under the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Image,
    Upload,
    Task,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Image, Kind::Upload, Kind::Task];

    fn as_str(self) -> &'static str {
        match self {
            Kind::Image => "images",
            Kind::Upload => "uploads",
            Kind::Task => "tasks",
        }
    }

    fn of_folder(folder: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == folder)
    }
}

/// A user's pseudonym within an organisation: stable, not reversible
/// without the user id, never the id itself.
pub fn owner_id(org: &str, user: &str) -> String {
    crate::telemetry::sha256(format!("{org}\0{user}").as_bytes())[..32].to_string()
}

/// Adds one object of its kind to an erasure's counts.
type Counter = fn(&mut Erased);

/// What an erasure removed: counts, never contents.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Erased {
    pub images: u64,
    pub uploads: u64,
    pub tasks: u64,
    pub prompts: u64,
}

impl ImageStore {
    /// Records that `user` of `org` owns the image at `key`.
    pub async fn mark_image(&self, org: &str, user: &str, key: &str) -> Result<(), StorageError> {
        self.mark_owner(org, user, Kind::Image, key).await
    }

    /// Records that `user` of `org` owns upload `id` (before its ticket is given out).
    pub async fn mark_upload(&self, org: &str, user: &str, id: &str) -> Result<(), StorageError> {
        self.mark_owner(org, user, Kind::Upload, upload_path(org, id)?.as_ref())
            .await
    }

    /// Records that `user` of `org` owns task `task_id` (before its record is written).
    pub async fn mark_task(&self, org: &str, user: &str, task_id: &str) -> Result<(), StorageError> {
        self.mark_owner(org, user, Kind::Task, task_path(org, task_id)?.as_ref())
            .await
    }

    async fn mark_owner(&self, org: &str, user: &str, kind: Kind, path: &str) -> Result<(), StorageError> {
        let name = path.rsplit('/').next().unwrap_or(path);
        let marker = safe_path(&format!(
            "owners/{org}/{}/{}/{name}",
            owner_id(org, user),
            kind.as_str()
        ))?;
        self.inner().put(&marker, PutPayload::from(path.to_string())).await?;
        Ok(())
    }

    /// Keeps an opted-in prompt apart from the audit chain (which holds its
    /// hash), under its owner, so erasure can remove it. The prompt of a
    /// call that `started` before its owner was erased is not kept.
    pub async fn put_prompt(
        &self,
        org: &str,
        user: &str,
        sha256: &str,
        text: &str,
        started: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let owner = owner_id(org, user);
        let path = safe_path(&format!("audit-prompts/{org}/{owner}/{sha256}.txt"))?;
        self.inner().put(&path, PutPayload::from(text.to_string())).await?;
        if self
            .erased_since(org, &[&owner_tombstone(&owner), ORG_TOMBSTONE], started)
            .await
        {
            self.delete_quietly(&path).await?;
        }
        Ok(())
    }

    /// Whether task `task_id` (created at `created`) was erased: by its
    /// owner's erasure, or its organisation's.
    pub(crate) async fn task_erased(&self, org: &str, task_id: &str, created: DateTime<Utc>) -> bool {
        self.read_tombstone(org, &task_tombstone(task_id)).await.is_some()
            || self.erased_since(org, &[ORG_TOMBSTONE], created).await
    }

    /// Removes what a task's writers may have brought back after its erasure.
    pub(crate) async fn forget_task(&self, org: &str, task_id: &str) -> Result<(), StorageError> {
        for path in [
            task_path(org, task_id)?,
            task_end_path(org, task_id)?,
            task_lease_path(org, task_id)?,
        ] {
            self.delete_quietly(&path).await?;
        }
        Ok(())
    }

    /// Deletes stored images that will not be delivered (their task ended
    /// otherwise, or was erased) and their owner records.
    pub async fn discard_images(&self, org: &str, user: &str, keys: &[String]) {
        let owner = owner_id(org, user);
        for key in keys {
            let (Ok(path), Some(file)) = (parse_key(key), key.rsplit('/').next()) else {
                continue;
            };
            let marker = safe_path(&format!("owners/{org}/{owner}/{}/{file}", Kind::Image.as_str()));
            for path in [Ok(path), marker].into_iter().flatten() {
                if let Err(error) = self.delete_quietly(&path).await {
                    tracing::warn!(%error, %key, "could not delete an undelivered image");
                }
            }
        }
    }

    /// Erases one user's (or, without `user`, a whole organisation's)
    /// images, uploads, task records and kept prompts.
    pub async fn erase(&self, org: &str, user: Option<&str>, now: DateTime<Utc>) -> Result<Erased, StorageError> {
        if !is_safe_segment(org) || is_reserved_org(org) {
            return Err(StorageError::InvalidKey);
        }
        match user {
            Some(user) => self.erase_user(org, user, now).await,
            None => self.erase_org(org, now).await,
        }
    }

    async fn erase_user(&self, org: &str, user: &str, now: DateTime<Utc>) -> Result<Erased, StorageError> {
        let owner = owner_id(org, user);
        let mut erased = Erased::default();
        // First: a call of this owner's that ends later keeps no prompt.
        self.tombstone(org, &owner_tombstone(&owner), now).await?;
        for marker in self.list_prefix(&format!("owners/{org}/{owner}")).await? {
            let target = String::from_utf8_lossy(&self.inner().get(&marker).await?.bytes().await?).into_owned();
            let target_path = safe_path(&target)?;
            let kind = marker.as_ref().split('/').nth(3).and_then(Kind::of_folder);
            let file = target.rsplit('/').next().unwrap_or_default();
            // The tombstone before the deletion: a writer still running sees it.
            match kind {
                Some(Kind::Image) => self.tombstone(org, file, now).await?,
                Some(Kind::Task) => {
                    let task_id = file.strip_suffix(".json").unwrap_or(file);
                    self.tombstone(org, &task_tombstone(task_id), now).await?;
                }
                _ => {}
            }
            let removed = self.delete_quietly(&target_path).await?;
            match kind {
                Some(Kind::Image) => erased.images += u64::from(removed),
                Some(Kind::Upload) => erased.uploads += u64::from(removed),
                Some(Kind::Task) => {
                    erased.tasks += u64::from(removed);
                    // Its end and lease go with it.
                    self.forget_task(org, file.strip_suffix(".json").unwrap_or(file))
                        .await?;
                }
                None => {}
            }
            self.delete_quietly(&marker).await?;
        }
        for prompt in self.list_prefix(&format!("audit-prompts/{org}/{owner}")).await? {
            erased.prompts += u64::from(self.delete_quietly(&prompt).await?);
        }
        Ok(erased)
    }

    async fn erase_org(&self, org: &str, now: DateTime<Utc>) -> Result<Erased, StorageError> {
        let mut erased = Erased::default();
        // First, so a task or call still running sees it (`erased_since`).
        self.tombstone(org, ORG_TOMBSTONE, now).await?;
        // Each prefix and what one of its objects counts as (owner records count as nothing).
        let prefixes: [(String, Counter); 5] = [
            (org.to_string(), |e| e.images += 1),
            (format!("uploads/{org}"), |e| e.uploads += 1),
            (format!("tasks/{org}"), |e| e.tasks += 1),
            (format!("audit-prompts/{org}"), |e| e.prompts += 1),
            (format!("owners/{org}"), |_| {}),
        ];
        for (prefix, count) in prefixes {
            for path in self.list_prefix(&prefix).await? {
                // A task is its record; its lease and end go with it uncounted.
                let beside = [".lease", ".end"].iter().any(|s| path.as_ref().ends_with(s));
                if self.delete_quietly(&path).await? && !beside {
                    count(&mut erased);
                }
            }
        }
        Ok(erased)
    }

    /// Whether the image at `key` (missing from the store) was erased on
    /// request: its own tombstone, or its organisation's erased on or after
    /// the image's day.
    pub async fn was_erased(&self, key: &str) -> bool {
        let mut parts = key.split('/');
        let (Some(org), Some(y), Some(m), Some(d), Some(file)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        if self.read_tombstone(org, file).await.is_some() {
            return true;
        }
        let made = NaiveDate::parse_from_str(&format!("{y}-{m}-{d}"), "%Y-%m-%d").ok();
        match (self.read_tombstone(org, ORG_TOMBSTONE).await, made) {
            (Some(at), Some(made)) => made <= at.date_naive(),
            _ => false,
        }
    }

    async fn tombstone(&self, org: &str, name: &str, now: DateTime<Utc>) -> Result<(), StorageError> {
        let path = safe_path(&format!("erased/{org}/{name}"))?;
        self.inner().put(&path, PutPayload::from(now.to_rfc3339())).await?;
        Ok(())
    }

    /// Whether one of the tombstones `names` of `org` was written at or
    /// after `started` (less the clock skew allowed).
    async fn erased_since(&self, org: &str, names: &[&str], started: DateTime<Utc>) -> bool {
        for name in names {
            if self
                .read_tombstone(org, name)
                .await
                .is_some_and(|at| at + CLOCK_SKEW >= started)
            {
                return true;
            }
        }
        false
    }

    async fn read_tombstone(&self, org: &str, name: &str) -> Option<DateTime<Utc>> {
        let path = safe_path(&format!("erased/{org}/{name}")).ok()?;
        let bytes: Bytes = self.inner().get(&path).await.ok()?.bytes().await.ok()?;
        DateTime::parse_from_rfc3339(std::str::from_utf8(&bytes).ok()?)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }

    async fn list_prefix(&self, prefix: &str) -> Result<Vec<Path>, StorageError> {
        let prefix = safe_path(prefix)?;
        Ok(self
            .inner()
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?)
    }

    /// Deletes `path`; `false` when it was already gone.
    async fn delete_quietly(&self, path: &Path) -> Result<bool, StorageError> {
        match self.inner().delete(path).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }
}

/// A user's tombstone: when the owner's data was last erased.
fn owner_tombstone(owner: &str) -> String {
    format!("_owner-{owner}")
}

/// A task's tombstone: it was erased, whenever it runs on.
fn task_tombstone(task_id: &str) -> String {
    format!("{task_id}.task")
}

fn safe_path(path: &str) -> Result<Path, StorageError> {
    if path.split('/').all(is_safe_segment) {
        Path::parse(path).map_err(|_| StorageError::InvalidKey)
    } else {
        Err(StorageError::InvalidKey)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::media::types::OutputFormat;

    fn store() -> ImageStore {
        ImageStore::new(Arc::new(object_store::memory::InMemory::new()), "memory")
    }

    #[test]
    fn owners_are_pseudonyms_per_organisation() {
        assert_eq!(owner_id("acme", "ann"), owner_id("acme", "ann"));
        assert_ne!(owner_id("acme", "ann"), owner_id("other", "ann"));
        assert!(!owner_id("acme", "ann").contains("ann"));
        assert_eq!(owner_id("acme", "ann").len(), 32);
    }

    #[tokio::test]
    async fn a_users_erasure_takes_exactly_that_users_objects() {
        let store = store();
        let now = Utc::now();
        let png = || vec![(PutPayload::from_static(b"png"), OutputFormat::Png)];
        let ann = store.put_all("acme", "ann", &png(), now).await.unwrap();
        let bob = store.put_all("acme", "bob", &png(), now).await.unwrap();
        store.put_prompt("acme", "ann", "abc", "a red fox", now).await.unwrap();
        let erased = store.erase("acme", Some("ann"), now).await.unwrap();
        assert_eq!(
            erased,
            Erased {
                images: 1,
                prompts: 1,
                ..Default::default()
            }
        );
        assert!(store.get(&ann[0]).await.is_err());
        assert!(store.was_erased(&ann[0]).await);
        assert_eq!(&store.get(&bob[0]).await.unwrap()[..], b"png");
        assert!(!store.was_erased(&bob[0]).await);
        // Again: nothing left to erase.
        assert_eq!(store.erase("acme", Some("ann"), now).await.unwrap(), Erased::default());
    }

    /// A task still running when its owner is erased: its end, written
    /// after, is removed again with what it brought back (record, lease),
    /// and the prompt of its call is not kept; a later call's is.
    #[tokio::test]
    async fn work_running_through_an_erasure_keeps_nothing() {
        use crate::storage::store::TaskEnd;
        let store = store();
        let now = Utc::now();
        let task = uuid::Uuid::new_v4().to_string();
        store.mark_task("acme", "ann", &task).await.unwrap();
        store
            .put_task("acme", &task, Bytes::from_static(b"working"))
            .await
            .unwrap();
        let erased = store.erase("acme", Some("ann"), now).await.unwrap();
        assert_eq!(erased.tasks, 1);
        store
            .put_task_lease("acme", &task, Bytes::from_static(b"lease"))
            .await
            .unwrap();
        let ended = store
            .finish_task("acme", &task, now, Bytes::from_static(b"completed"))
            .await
            .unwrap();
        assert_eq!(ended, TaskEnd::Erased);
        assert!(store.list_prefix("tasks/acme").await.unwrap().is_empty());
        // The images it stored after the erasure go undelivered, owner records and all.
        let png = vec![(PutPayload::from_static(b"png"), OutputFormat::Png)];
        let keys = store.put_all("acme", "ann", &png, now).await.unwrap();
        store.discard_images("acme", "ann", &keys).await;
        assert!(store.list_prefix("acme").await.unwrap().is_empty());
        assert!(store.list_prefix("owners/acme").await.unwrap().is_empty());
        store.put_prompt("acme", "ann", "abc", "a red fox", now).await.unwrap();
        assert!(store.list_prefix("audit-prompts/acme").await.unwrap().is_empty());
        let later = now + chrono::TimeDelta::minutes(1);
        store
            .put_prompt("acme", "ann", "def", "a blue fox", later)
            .await
            .unwrap();
        assert_eq!(store.list_prefix("audit-prompts/acme").await.unwrap().len(), 1);
        assert_eq!(
            store.erase("acme", Some("ann"), later).await.unwrap(),
            Erased {
                prompts: 1,
                ..Default::default()
            }
        );
        // An organisation's erasure stops its tasks' ends the same way.
        let other = uuid::Uuid::new_v4().to_string();
        store.mark_task("globex", "bob", &other).await.unwrap();
        store
            .put_task("globex", &other, Bytes::from_static(b"working"))
            .await
            .unwrap();
        assert_eq!(store.erase("globex", None, now).await.unwrap().tasks, 1);
        let ended = store
            .finish_task("globex", &other, now, Bytes::from_static(b"completed"))
            .await
            .unwrap();
        assert_eq!(ended, TaskEnd::Erased);
        assert!(store.list_prefix("tasks/globex").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_organisations_erasure_takes_everything_of_it_and_no_more() {
        let store = store();
        let now = Utc::now();
        let png = || vec![(PutPayload::from_static(b"png"), OutputFormat::Png)];
        let acme = store.put_all("acme", "ann", &png(), now).await.unwrap();
        let other = store.put_all("other", "ann", &png(), now).await.unwrap();
        let erased = store.erase("acme", None, now).await.unwrap();
        assert_eq!(erased.images, 1);
        assert!(store.was_erased(&acme[0]).await);
        assert!(store.get(&other[0]).await.is_ok());
        assert!(matches!(
            store.erase("audit", None, now).await,
            Err(StorageError::InvalidKey)
        ));
    }
}
