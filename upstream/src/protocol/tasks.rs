//! The Tasks extension (SEP-2663): an image call from a client that declared
//! it returns a task at once; the generation runs on, its record lives in the
//! shared store so any replica answers `tasks/get`, a cancellation written by
//! any replica stops it, and a lease (`task_lease`) lets the others report
//! it failed if this replica dies. A task ends once (`ImageStore::finish_task`):
//! the first of its completion, a cancellation or a lapse settlement decides,
//! and a completion that comes second deletes the images it stored. A task
//! whose owner is erased stops (its record is gone) and keeps nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rmcp::model::{CallToolResponse, CreateTaskResult, DetailedTask, JsonObject, Task, TaskPayload, TaskStatus};
use rmcp::ErrorData;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::identity::Caller;
use crate::pipeline::run::ImageCall;
use crate::protocol::task_lease::Lease;
use crate::protocol::tools::ImageTools;
use crate::storage::store::{StorageError, TaskEnd};
use crate::telemetry::traces;

/// Clock skew allowed between replicas when judging a lease.
const LEASE_SKEW_MS: u64 = 2_000;
/// The poll interval suggested to clients.
const TASK_POLL: Duration = Duration::from_secs(2);
/// How often a running task's record is re-read for a cancellation mark (one
/// small read per running task; generations take seconds to minutes).
const CANCEL_CHECK: Duration = Duration::from_secs(1);
/// How long task records are kept (the retention sweeper removes them later).
const TASK_TTL_MS: u64 = 24 * 3600 * 1000;

impl ImageTools {
    /// Starts a prepared call as a task and answers with the task handle.
    pub(crate) async fn start_task(
        &self,
        caller: Caller,
        call: ImageCall,
        started: Instant,
    ) -> Result<CallToolResponse, ErrorData> {
        let now = Utc::now().to_rfc3339();
        let task = Task::new(uuid::Uuid::new_v4().to_string(), TaskStatus::Working, now.clone(), now)
            .with_ttl_ms(TASK_TTL_MS)
            .with_poll_interval_ms(TASK_POLL.as_millis() as u64)
            .with_status_message("generating");
        // The generation's span, stored with the lease for tasks/get to link to.
        let span = traces::task_span(call.tool, &task.task_id);
        let traced = traces::traceparent_of(&span);
        // Durable before the client hears of it, so tasks/get on any replica
        // finds it; the owner and the lease first, so a record never exists
        // without them (erasure finds it by its owner).
        self.state
            .store
            .mark_task(&caller.org, &caller.user, &task.task_id)
            .await
            .map_err(|error| {
                tracing::error!(%error, "recording a task's owner failed");
                ErrorData::internal_error("the task store is unavailable; try again shortly", None)
            })?;
        self.renew_lease(&caller, &task.task_id, traced.clone()).await?;
        self.write_task(&caller, &DetailedTask::new(task.clone(), TaskPayload::Working))
            .await?;
        tracing::info!(task_id = %task.task_id, org = %caller.org, "task started");
        let tools = self.clone();
        let seed = task.clone();
        let running = async move {
            let cancelled = CancellationToken::new();
            let lease_lost = Arc::new(AtomicBool::new(false));
            let watch = tools.watch_task(
                caller.clone(),
                seed.task_id.clone(),
                traced,
                cancelled.clone(),
                lease_lost.clone(),
            );
            // The watcher only trips the token (run then stops the provider
            // call, stores nothing and audits); it never finishes by itself.
            let result = tokio::select! {
                result = crate::pipeline::run::run(&tools.state, &caller, &call, started, None, cancelled.clone()) => result,
                _ = watch => return,
            };
            cancelled.cancel();
            // Stopped for a lost lease: readers report the lapse; nothing was stored.
            if lease_lost.load(Ordering::SeqCst) && result.is_error == Some(true) {
                return;
            }
            let result = match serde_json::to_value(&result) {
                Ok(serde_json::Value::Object(result)) => result,
                _ => JsonObject::new(),
            };
            let stored = stored_keys(&result);
            // A record gone (erased) still goes through `finish_task`: it
            // removes whatever the task brought back after the erasure.
            let delivered = if matches!(marked_cancelled(&tools, &caller, &seed.task_id).await, Ok(true)) {
                false
            } else {
                let mut finished = seed;
                finished.last_updated_at = Utc::now().to_rfc3339();
                finished.status_message = None;
                let done = DetailedTask::new(finished, TaskPayload::Completed { result });
                match tools.finish_task(&caller, &done).await {
                    Ok(ended) => ended == TaskEnd::Recorded,
                    Err(error) => {
                        tracing::error!(?error, "recording a finished task failed");
                        true
                    }
                }
            };
            // Cancelled, failed or erased first: the images go undelivered.
            if !delivered && !stored.is_empty() {
                tools
                    .state
                    .store
                    .discard_images(&caller.org, &caller.user, &stored)
                    .await;
            }
        };
        self.state.tasks.spawn(running.instrument(span));
        Ok(CallToolResponse::Task(CreateTaskResult::new(task)))
    }

    /// Keeps a running task's lease fresh and trips `cancelled` when the
    /// task's record says it was cancelled (by any replica), or when the lease
    /// could not be renewed before it lapses (then `lease_lost` is set).
    async fn watch_task(
        &self,
        caller: Caller,
        task_id: String,
        traced: Option<String>,
        cancelled: CancellationToken,
        lease_lost: Arc<AtomicBool>,
    ) {
        let period = self.state.task_lease;
        let mut renewed_at = Instant::now();
        loop {
            tokio::time::sleep(CANCEL_CHECK).await;
            if cancelled.is_cancelled() {
                std::future::pending::<()>().await;
            }
            if renewed_at.elapsed() >= period / 3 {
                match self.renew_lease(&caller, &task_id, traced.clone()).await {
                    Ok(()) => renewed_at = Instant::now(),
                    Err(_) if renewed_at.elapsed() + 2 * CANCEL_CHECK >= period => {
                        tracing::error!(task_id, "the task's lease could not be renewed; stopping it");
                        lease_lost.store(true, Ordering::SeqCst);
                        cancelled.cancel();
                        std::future::pending::<()>().await;
                    }
                    Err(_) => {}
                }
            }
            if cancelled_in_store(self, &caller, &task_id).await {
                cancelled.cancel();
                std::future::pending::<()>().await;
            }
        }
    }

    /// Extends the task's lease by one period from now.
    async fn renew_lease(&self, caller: &Caller, task_id: &str, span: Option<String>) -> Result<(), ErrorData> {
        let until_ms = Utc::now().timestamp_millis().max(0) as u64 + self.state.task_lease.as_millis() as u64;
        let lease = serde_json::to_vec(&Lease { until_ms, span })
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        self.state
            .store
            .put_task_lease(&caller.org, task_id, lease.into())
            .await
            .map_err(|error| {
                tracing::warn!(%error, task_id, "renewing a task lease failed");
                ErrorData::internal_error("the task store is unavailable; try again shortly", None)
            })
    }

    /// The task's lease: `Err` when the store could not say.
    async fn read_lease(&self, caller: &Caller, task_id: &str) -> Result<Option<Lease>, ()> {
        match self.state.store.get_task_lease(&caller.org, task_id).await {
            Ok(bytes) => Ok(serde_json::from_slice::<Lease>(&bytes).ok()),
            Err(crate::storage::store::StorageError::NotFound) => Ok(None),
            Err(_) => Err(()),
        }
    }

    /// A `working` record whose lease lapsed (its replica died) becomes
    /// `failed`, recorded so every replica answers the same.
    async fn settle_lapsed(
        &self,
        caller: &Caller,
        task: DetailedTask,
        lease: Result<Option<Lease>, ()>,
    ) -> DetailedTask {
        if task.status() != TaskStatus::Working {
            return task;
        }
        // Unknown: do not declare a task dead on a store hiccup.
        let Ok(lease) = lease else { return task };
        let created_ms = chrono::DateTime::parse_from_rfc3339(&task.task.created_at)
            .map_or(0, |t| t.timestamp_millis().max(0) as u64);
        let now_ms = Utc::now().timestamp_millis().max(0) as u64;
        let period_ms = self.state.task_lease.as_millis() as u64;
        // Allow for clock skew between the replica that renews and this one.
        if !crate::protocol::task_lease::lapsed(
            lease.as_ref(),
            created_ms,
            now_ms.saturating_sub(LEASE_SKEW_MS),
            period_ms,
        ) {
            return task;
        }
        let until = lease.map_or(created_ms + period_ms, |l| l.until_ms);
        let failed = crate::protocol::task_lease::failed(&task, until, Utc::now().to_rfc3339());
        tracing::warn!(
            task_id = task.task.task_id,
            "task lease lapsed; recording the task as failed"
        );
        match self.finish_task(caller, &failed).await {
            // It finished meanwhile after all: that end stands.
            Ok(TaskEnd::AlreadyEnded(record)) => serde_json::from_slice(&record).unwrap_or(failed),
            Ok(_) => failed,
            Err(error) => {
                tracing::warn!(?error, "recording a lapsed task failed");
                failed
            }
        }
    }

    /// The task as a client asks for it: its span links to the generation's.
    pub(crate) async fn read_task(&self, caller: &Caller, task_id: &str) -> Result<DetailedTask, ErrorData> {
        self.read_task_linking(caller, task_id, true).await
    }

    async fn read_task_linking(&self, caller: &Caller, task_id: &str, link: bool) -> Result<DetailedTask, ErrorData> {
        let unknown = || ErrorData::invalid_params(format!("no task {task_id} of yours"), None);
        let bytes = match self.state.store.get_task(&caller.org, task_id).await {
            Ok(bytes) => bytes,
            Err(crate::storage::store::StorageError::NotFound | crate::storage::store::StorageError::InvalidKey) => {
                return Err(unknown())
            }
            Err(error) => {
                tracing::error!(%error, "reading a task failed");
                return Err(ErrorData::internal_error(
                    "the task store is unavailable; try again shortly",
                    None,
                ));
            }
        };
        let task: DetailedTask = serde_json::from_slice(&bytes).map_err(|_| unknown())?;
        // The lease says whether a working task still runs, and names the
        // span that runs it (read for finished tasks only when tracing).
        let link = link && traces::enabled();
        let lease = if task.status() == TaskStatus::Working || link {
            self.read_lease(caller, task_id).await
        } else {
            Ok(None)
        };
        if let Some(span) = lease
            .as_ref()
            .ok()
            .and_then(|l| l.as_ref())
            .and_then(|l| l.span.as_deref())
        {
            if link {
                traces::link_current(span);
            }
        }
        Ok(self.settle_lapsed(caller, task, lease).await)
    }

    /// Records how a task ended, unless it already ended otherwise or was
    /// erased (`ImageStore::finish_task`).
    pub(crate) async fn finish_task(&self, caller: &Caller, task: &DetailedTask) -> Result<TaskEnd, ErrorData> {
        let bytes = serde_json::to_vec(task).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let created =
            chrono::DateTime::parse_from_rfc3339(&task.task.created_at).map_or_else(|_| Utc::now(), |t| t.to_utc());
        self.state
            .store
            .finish_task(&caller.org, &task.task.task_id, created, bytes.into())
            .await
            .map_err(|error| {
                tracing::error!(%error, "recording a task's end failed");
                ErrorData::internal_error("the task store is unavailable; try again shortly", None)
            })
    }

    pub(crate) async fn write_task(&self, caller: &Caller, task: &DetailedTask) -> Result<(), ErrorData> {
        let bytes = serde_json::to_vec(task).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        self.state
            .store
            .put_task(&caller.org, &task.task.task_id, bytes.into())
            .await
            .map_err(|error| {
                tracing::error!(%error, "writing a task failed");
                ErrorData::internal_error("the task store is unavailable; try again shortly", None)
            })
    }
}

/// Whether the task should stop: cancelled, or its record gone (its owner
/// was erased). Read from inside the task's own span: no link.
async fn cancelled_in_store(tools: &ImageTools, caller: &Caller, task_id: &str) -> bool {
    match marked_cancelled(tools, caller, task_id).await {
        Ok(cancelled) => cancelled,
        Err(StorageError::NotFound) => true,
        Err(_) => false,
    }
}

/// Whether the task's record says it was cancelled.
async fn marked_cancelled(tools: &ImageTools, caller: &Caller, task_id: &str) -> Result<bool, StorageError> {
    let bytes = tools.state.store.get_task(&caller.org, task_id).await?;
    Ok(serde_json::from_slice::<DetailedTask>(&bytes).is_ok_and(|task| task.status() == TaskStatus::Cancelled))
}

/// The storage keys of the images a tool result links to.
fn stored_keys(result: &JsonObject) -> Vec<String> {
    result
        .get("structuredContent")
        .and_then(|content| content.get("image_urls"))
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|url| url.as_str().and_then(crate::storage::store::key_in_uri))
        .collect()
}
