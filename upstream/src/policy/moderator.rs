//! The moderation model as the call path uses it: the provider client
//! (`providers::moderation`) behind the same retry policy and circuit
//! breaker as image models (`routing::chain`), with a GenAI span per attempt
//! and latency and error metrics. It answers with the model's verdict or
//! the error; what either means is the policy's business (`rules`).

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use crate::providers::moderation::{ModerationClient, ModerationInput, ModerationResult};
use crate::providers::BackendError;
use crate::routing::chain::{retryable, Breaker, BreakerPolicy, RetryPolicy};
use crate::telemetry::metrics::{exemplar, ErrorLabels, Metrics, StageLabels};
use crate::telemetry::traces::TraceIds;

/// The moderation model, with retries and a breaker.
pub struct Moderator {
    client: ModerationClient,
    retry: RetryPolicy,
    breaker: Breaker,
    metrics: Arc<Metrics>,
}

impl Moderator {
    pub fn new(client: ModerationClient, retry: RetryPolicy, breaker: BreakerPolicy, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            retry,
            breaker: Breaker::new(breaker),
            metrics,
        }
    }

    pub fn model(&self) -> &str {
        self.client.model()
    }

    /// The model's verdict on `inputs`, checked at `stage` (`prompt`, `image`)
    /// for a call in `trace` (the latency's exemplar).
    pub async fn check(
        &self,
        stage: &str,
        inputs: &[ModerationInput],
        trace: Option<&TraceIds>,
    ) -> Result<ModerationResult, BackendError> {
        let started = Instant::now();
        let outcome = self.attempts(stage, inputs).await;
        let label = match &outcome {
            Ok(result) if result.flagged => "flagged",
            Ok(_) => "clear",
            Err(_) => "error",
        };
        self.metrics
            .moderation_seconds
            .get_or_create(&StageLabels {
                stage: stage.into(),
                outcome: label.into(),
            })
            .observe(started.elapsed().as_secs_f64(), exemplar(trace), None);
        outcome
    }

    async fn attempts(&self, stage: &str, inputs: &[ModerationInput]) -> Result<ModerationResult, BackendError> {
        if self.breaker.is_open() {
            self.count_error("breaker_open");
            return Err(BackendError::Transport(
                "the moderation model failed repeatedly; its circuit breaker is open".into(),
            ));
        }
        let deadline = tokio::time::Instant::now() + self.retry.call_deadline;
        let mut attempt = 1;
        loop {
            let span =
                crate::telemetry::traces::moderation_span(self.client.kind(), self.client.model(), stage, attempt);
            let outcome = tokio::time::timeout_at(deadline, self.client.moderate(inputs).instrument(span.clone()))
                .await
                .unwrap_or_else(|_| {
                    Err(BackendError::AnswerLost(
                        "no moderation answer within its deadline".into(),
                    ))
                });
            let error = match outcome {
                Ok(result) => {
                    crate::telemetry::traces::record_attempt(&span, Some(self.client.model()), None, None);
                    self.breaker.record(true);
                    return Ok(result);
                }
                Err(error) => error,
            };
            crate::telemetry::traces::record_attempt(&span, None, None, Some(error.class()));
            self.count_error(error.class());
            let retry_after = match &error {
                BackendError::RateLimited { retry_after_secs } => *retry_after_secs,
                _ => None,
            };
            let delay = self.retry.backoff(attempt, retry_after);
            let again = retryable(&error)
                && attempt < self.retry.max_attempts
                && tokio::time::Instant::now() + delay < deadline;
            if !again {
                if counts_against_breaker(&error) && self.breaker.record(false) {
                    tracing::warn!(model = self.client.model(), "moderation circuit breaker opened");
                }
                return Err(error);
            }
            tracing::info!(parent: &span, delay_ms = delay.as_millis() as u64, "retrying the moderation model");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    fn count_error(&self, class: &str) {
        self.metrics
            .moderation_errors
            .get_or_create(&ErrorLabels { class: class.into() })
            .inc();
    }
}

/// Whether a failure says the moderation model is unwell. A request it
/// rejects (400: an input it cannot check) is that call's problem: counted,
/// it would let a few odd inputs open the breaker for everyone. 401/403/404
/// still count (they fail every call: the breaker only stops futile requests).
fn counts_against_breaker(error: &BackendError) -> bool {
    !matches!(error, BackendError::BadRequest(_) | BackendError::ContentRefused(_))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::providers::moderation::ModerationSettings;

    /// A moderations endpoint that answers 503 to its first `failures` requests.
    async fn endpoint(failures: u32) -> (String, Arc<AtomicU32>) {
        endpoint_failing_with(failures, http::StatusCode::SERVICE_UNAVAILABLE).await
    }

    /// A moderations endpoint that answers `status` to its first `failures` requests.
    async fn endpoint_failing_with(failures: u32, status: http::StatusCode) -> (String, Arc<AtomicU32>) {
        let seen = Arc::new(AtomicU32::new(0));
        let counter = seen.clone();
        let app = axum::Router::new().route(
            "/v1/moderations",
            axum::routing::post(move || {
                let counter = counter.clone();
                async move {
                    if counter.fetch_add(1, Ordering::SeqCst) < failures {
                        let body = serde_json::json!({"error": {"message": "overloaded", "type": "server_error", "param": null, "code": null}});
                        return (status, axum::Json(body));
                    }
                    let body = serde_json::json!({"id": "modr-1", "model": "omni-moderation-latest", "results": [
                        {"flagged": true, "categories": {"violence": true}, "category_scores": {"violence": 0.9},
                         "category_applied_input_types": {"violence": ["text"]}}]});
                    (http::StatusCode::OK, axum::Json(body))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, seen)
    }

    fn moderator(base: String, attempts: u32) -> Moderator {
        let client = ModerationClient::new(ModerationSettings {
            base_url: base,
            api_key: "k".into(),
            model: "omni-moderation-latest".into(),
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        let retry = RetryPolicy {
            max_attempts: attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            call_deadline: Duration::from_secs(10),
        };
        let breaker = BreakerPolicy {
            failure_threshold: 2,
            open_for: Duration::from_secs(60),
        };
        Moderator::new(client, retry, breaker, Metrics::new())
    }

    fn text() -> Vec<ModerationInput> {
        vec![ModerationInput::Text("a scene".into())]
    }

    #[tokio::test]
    async fn a_transient_failure_is_retried() {
        let (base, seen) = endpoint(1).await;
        let verdict = moderator(base, 2).check("prompt", &text(), None).await.unwrap();
        assert_eq!(verdict.categories.get("violence"), Some(&true));
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failed_checks_open_the_breaker_and_later_ones_ask_nobody() {
        let (base, seen) = endpoint(u32::MAX).await;
        let moderator = moderator(base, 1);
        for _ in 0..2 {
            let error = moderator.check("prompt", &text(), None).await.unwrap_err();
            assert_eq!(error.class(), "provider_error");
        }
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        let error = moderator.check("image", &text(), None).await.unwrap_err();
        assert_eq!(error.class(), "provider_unreachable", "{error}");
        assert_eq!(seen.load(Ordering::SeqCst), 2, "an open breaker sends nothing");
    }

    #[tokio::test]
    async fn inputs_the_model_rejects_do_not_open_the_breaker() {
        let (base, seen) = endpoint_failing_with(3, http::StatusCode::BAD_REQUEST).await;
        let moderator = moderator(base, 1);
        for _ in 0..3 {
            let error = moderator.check("prompt", &text(), None).await.unwrap_err();
            assert_eq!(error.class(), "provider_bad_request");
        }
        let verdict = moderator.check("prompt", &text(), None).await.unwrap();
        assert!(verdict.flagged, "the breaker stayed closed");
        assert_eq!(seen.load(Ordering::SeqCst), 4);
    }
}
