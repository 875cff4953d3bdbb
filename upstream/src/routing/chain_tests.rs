use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;

use super::*;
use crate::media::types::ImageSize;
use crate::media::types::{Background, OutputFormat, Quality};
use crate::providers::GeneratedImage;

/// A backend answering from a script, counting calls.
struct Scripted {
    model: &'static str,
    answers: Mutex<VecDeque<Result<(), BackendError>>>,
    calls: AtomicU32,
}

impl Scripted {
    fn new(model: &'static str, answers: Vec<Result<(), BackendError>>) -> Arc<Self> {
        Arc::new(Self {
            model,
            answers: Mutex::new(answers.into()),
            calls: AtomicU32::new(0),
        })
    }
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ImageBackend for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn model(&self) -> &str {
        self.model
    }
    async fn generate(&self, _: &ImageRequest) -> Result<Generation, BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = self.answers.lock().unwrap().pop_front().unwrap_or(Ok(()));
        answer.map(|_| Generation {
            images: vec![GeneratedImage {
                bytes: Bytes::from_static(b"png"),
                format: OutputFormat::Png,
            }],
            model: self.model.to_string(),
            usage: None,
            quota: None,
        })
    }
}

fn request() -> ImageRequest {
    ImageRequest {
        prompt: "p".into(),
        size: ImageSize {
            width: 1024,
            height: 1024,
        },
        n: 1,
        quality: Quality::Auto,
        background: Background::Auto,
        output_format: OutputFormat::Png,
        output_compression: None,
        user: "u".into(),
        partials: None,
        edit: None,
        moderation: None,
    }
}

fn server_error() -> BackendError {
    BackendError::Provider {
        status: 500,
        message: "boom".into(),
    }
}

fn router(backends: Vec<Arc<Scripted>>, breaker: BreakerPolicy) -> ModelRouter {
    let retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(10),
        call_deadline: DEFAULT_CALL_DEADLINE,
    };
    ModelRouter::new(
        backends.into_iter().map(|b| b as Arc<dyn ImageBackend>).collect(),
        retry,
        breaker,
    )
}

#[tokio::test(start_paused = true)]
async fn retries_then_succeeds_honouring_retry_after() {
    let primary = Scripted::new(
        "a",
        vec![
            Err(BackendError::RateLimited {
                retry_after_secs: Some(7),
            }),
            Err(server_error()),
        ],
    );
    let r = router(vec![primary.clone()], BreakerPolicy::default());
    let started = Instant::now();
    let routed = r.generate(&request()).await.unwrap();
    assert_eq!(
        (routed.generation.model.as_str(), routed.fallbacks, primary.calls()),
        ("a", 0, 3)
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(7), "Retry-After honoured: {waited:?}");
    assert!(waited <= Duration::from_millis(7_200), "backoff bounded: {waited:?}");
}

#[tokio::test(start_paused = true)]
async fn content_refusal_is_final() {
    let primary = Scripted::new("a", vec![Err(BackendError::ContentRefused("no".into()))]);
    let fallback = Scripted::new("b", vec![]);
    let r = router(vec![primary.clone(), fallback.clone()], BreakerPolicy::default());
    assert!(matches!(
        r.generate(&request()).await,
        Err(BackendError::ContentRefused(_))
    ));
    assert_eq!((primary.calls(), fallback.calls()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn falls_back_after_retries_and_on_retired_models() {
    let primary = Scripted::new("a", vec![Err(server_error()), Err(server_error()), Err(server_error())]);
    let fallback = Scripted::new("b", vec![]);
    let r = router(vec![primary.clone(), fallback.clone()], BreakerPolicy::default());
    let routed = r.generate(&request()).await.unwrap();
    assert_eq!((routed.generation.model.as_str(), routed.fallbacks), ("b", 1));
    assert_eq!((primary.calls(), fallback.calls()), (3, 1));

    let retired = Scripted::new(
        "old",
        vec![Err(BackendError::ModelNotFound {
            model: "old".into(),
            setting: "X",
        })],
    );
    let current = Scripted::new("new", vec![]);
    let r = router(vec![retired.clone(), current], BreakerPolicy::default());
    let routed = r.generate(&request()).await.unwrap();
    assert_eq!(
        (routed.generation.model.as_str(), retired.calls()),
        ("new", 1),
        "no retry of a retired model"
    );
}

#[tokio::test(start_paused = true)]
async fn last_error_when_everything_fails() {
    let a = Scripted::new("a", vec![Err(server_error()); 3]);
    let b = Scripted::new("b", vec![Err(BackendError::Transport("down".into())); 3]);
    let r = router(vec![a, b], BreakerPolicy::default());
    assert!(matches!(r.generate(&request()).await, Err(BackendError::Transport(_))));
}

#[tokio::test(start_paused = true)]
async fn open_breaker_skips_the_backend_until_it_cools_down() {
    let breaker = BreakerPolicy {
        failure_threshold: 2,
        open_for: Duration::from_secs(60),
    };
    let primary = Scripted::new("a", vec![Err(server_error()); 6]);
    let fallback = Scripted::new("b", vec![]);
    let r = router(vec![primary.clone(), fallback.clone()], breaker);
    for _ in 0..2 {
        assert_eq!(r.generate(&request()).await.unwrap().fallbacks, 1);
    }
    assert_eq!(primary.calls(), 6);
    // Open: the primary is skipped without a call.
    let routed = r.generate(&request()).await.unwrap();
    assert_eq!(
        (routed.generation.model.as_str(), routed.fallbacks, primary.calls()),
        ("b", 1, 6)
    );
    // After the cool-down the primary is tried again (and now succeeds).
    tokio::time::advance(Duration::from_secs(61)).await;
    let routed = r.generate(&request()).await.unwrap();
    assert_eq!((routed.generation.model.as_str(), primary.calls()), ("a", 7));
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_longer_than_the_cap_is_not_waited_for() {
    let primary = Scripted::new(
        "a",
        vec![Err(BackendError::RateLimited {
            retry_after_secs: Some(60),
        })],
    );
    let r = router(vec![primary.clone()], BreakerPolicy::default());
    let started = Instant::now();
    assert!(matches!(
        r.generate(&request()).await,
        Err(BackendError::RateLimited { .. })
    ));
    assert_eq!((primary.calls(), started.elapsed()), (1, Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn requests_go_to_the_first_model_that_can_serve_them() {
    let catalog = Arc::new(crate::routing::catalog::ModelCatalog::builtin().unwrap());
    let v2 = Scripted::new("gpt-image-2", vec![]);
    let v15 = Scripted::new("gpt-image-1.5", vec![]);
    let r = router(vec![v2.clone(), v15.clone()], BreakerPolicy::default()).with_catalog(catalog);
    // Both can draw a plain square: the primary does.
    assert_eq!(r.generate(&request()).await.unwrap().fallbacks, 0);
    // Only gpt-image-1.5 makes transparent backgrounds: the primary is not even asked.
    let transparent = ImageRequest {
        background: Background::Transparent,
        ..request()
    };
    assert!(r.check(&transparent).is_ok());
    let routed = r.generate(&transparent).await.unwrap();
    assert_eq!(
        (routed.generation.model.as_str(), routed.fallbacks),
        ("gpt-image-1.5", 1)
    );
    assert_eq!((v2.calls(), v15.calls()), (1, 1));
    // Nobody takes 1280x720 PNGs with a transparent background: the primary's reason is given.
    let impossible = ImageRequest {
        size: ImageSize {
            width: 1280,
            height: 720,
        },
        ..transparent
    };
    let why = r.check(&impossible).unwrap_err();
    assert!(why.contains("cannot make transparent backgrounds"), "{why}");
}

/// A tab pricing every attempt on model `a` that may have been done at $1.
fn tab() -> Tab {
    let price = crate::routing::budget::tab::ModelPrice {
        pricing: crate::routing::pricing::Pricing {
            input_per_million_tokens: 0.0,
            output_per_million_tokens: 0.0,
            per_image: 1.0,
        },
        estimate_usd: 1.0,
    };
    Tab::new(std::collections::HashMap::from([("a".to_string(), price)]))
}

#[tokio::test(start_paused = true)]
async fn an_answer_lost_after_its_request_went_out_is_retried_and_both_are_on_the_tab() {
    let primary = Scripted::new(
        "a",
        vec![
            Err(BackendError::Transport("connection refused".into())),
            Err(BackendError::AnswerLost("cut off after its 200".into())),
        ],
    );
    let r = router(vec![primary.clone()], BreakerPolicy::default());
    let tab = tab();
    let routed = r
        .generate_in(&request(), None, Claim::default(), Some(&tab))
        .await
        .unwrap();
    assert_eq!((routed.generation.model.as_str(), primary.calls()), ("a", 3));
    // Never sent: nothing. Lost after it went out: its estimate. Served: its price.
    assert_eq!(tab.spent_usd(), 2.0);
}

/// A model that answers only after `latency`, with what its own client's
/// timeout would say.
struct Hanging {
    latency: Duration,
    calls: AtomicU32,
}

#[async_trait]
impl ImageBackend for Hanging {
    fn kind(&self) -> &'static str {
        "hanging"
    }
    fn model(&self) -> &str {
        "a"
    }
    async fn generate(&self, _: &ImageRequest) -> Result<Generation, BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.latency).await;
        Err(BackendError::AnswerLost("timed out".into()))
    }
}

#[tokio::test(start_paused = true)]
async fn attempts_and_retries_end_at_the_calls_deadline() {
    // Three attempts of 300 s would take 900 s, past Envoy's 600 s route timeout.
    let hanging = Arc::new(Hanging {
        latency: Duration::from_secs(300),
        calls: AtomicU32::new(0),
    });
    let retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(10),
        call_deadline: Duration::from_secs(540),
    };
    let r = ModelRouter::new(vec![hanging.clone()], retry, BreakerPolicy::default());
    let tab = tab();
    let started = Instant::now();
    let error = r
        .generate_in(&request(), None, Claim::default(), Some(&tab))
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(540), "cut at the deadline");
    assert_eq!(hanging.calls.load(Ordering::SeqCst), 2, "no third attempt past it");
    assert!(error.to_string().contains("GATEWAY_CALL_DEADLINE_SECS"), "{error}");
    assert_eq!(tab.spent_usd(), 2.0, "both attempts went out and may be billed");
}
