//! Leases of running tasks. The replica running a task renews a small lease
//! object beside the task record (never the record itself, so a renewal
//! cannot overwrite a cancellation written by another replica). When a
//! replica dies (SIGKILL, OOM, node loss) its leases stop being renewed;
//! once one lapses, any replica answering `tasks/get` records the task as
//! failed. A replica that cannot renew a lease in time stops the task itself,
//! so a task reported failed is never also delivered and billed.

use rmcp::model::{DetailedTask, JsonObject, TaskPayload};
use serde::{Deserialize, Serialize};

/// What the lease object holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lease {
    /// Unix milliseconds until which the running replica vouches for the task.
    pub until_ms: u64,
    /// The `traceparent` of the span running the generation (when traces
    /// are on), so `tasks/get` on any replica can link to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span: Option<String>,
}

/// Whether a `working` task's lease has lapsed at `now_ms`. A missing lease
/// counts as one taken when the task was created (records from before
/// leases, or a crash between writing the lease and the record).
pub fn lapsed(lease: Option<&Lease>, created_at_ms: u64, now_ms: u64, period_ms: u64) -> bool {
    let until = lease.map_or(created_at_ms.saturating_add(period_ms), |lease| lease.until_ms);
    now_ms > until
}

/// The failed record that replaces a task whose lease lapsed.
pub fn failed(task: &DetailedTask, until_ms: u64, now_rfc3339: String) -> DetailedTask {
    let message = format!(
        "The gateway replica running this task stopped before it finished (its lease lapsed at {}); nothing was stored or billed. Call generate_image again.",
        chrono::DateTime::from_timestamp_millis(until_ms as i64)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    );
    let mut error = JsonObject::new();
    error.insert("code".into(), (-32603).into());
    error.insert("message".into(), message.clone().into());
    let mut record = task.task.clone();
    record.last_updated_at = now_rfc3339;
    record.status_message = Some(message);
    DetailedTask::new(record, TaskPayload::Failed { error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{Task, TaskStatus};

    #[test]
    fn lapse_rules() {
        let period = 30_000;
        let cases = [
            (
                "renewed lease",
                Some(Lease {
                    until_ms: 200_000,
                    span: None,
                }),
                100_000,
                150_000,
                false,
            ),
            (
                "lapsed lease",
                Some(Lease {
                    until_ms: 120_000,
                    span: None,
                }),
                100_000,
                150_000,
                true,
            ),
            ("no lease, young task", None, 100_000, 120_000, false),
            ("no lease, old task", None, 100_000, 140_000, true),
        ];
        for (name, lease, created, now, expected) in cases {
            assert_eq!(lapsed(lease.as_ref(), created, now, period), expected, "case: {name}");
        }
    }

    #[test]
    fn a_lapsed_task_fails_with_a_message() {
        let task = Task::new("t".to_string(), TaskStatus::Working, "a".to_string(), "a".to_string());
        let record = failed(&DetailedTask::new(task, TaskPayload::Working), 0, "b".into());
        assert_eq!(record.status(), TaskStatus::Failed);
        let TaskPayload::Failed { error } = &record.payload else {
            panic!()
        };
        assert!(error["message"]
            .as_str()
            .unwrap()
            .contains("nothing was stored or billed"));
        let wire = serde_json::to_value(&record).unwrap();
        assert_eq!(wire["status"], "failed");
    }
}
