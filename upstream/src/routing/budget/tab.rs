//! What a call's provider attempts may have cost, for its budget
//! reservation to settle. Providers bill the work they did, not the answers
//! the gateway received: an attempt whose answer was lost after the request
//! went out may well be billed, and a retry is billed again. The chain
//! writes each attempt here as it starts and as it ends; `work` is the rule
//! for a failed one.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::media::types::Usage;
use crate::providers::{BackendError, Generation};
use crate::routing::pricing::Pricing;

/// Whether a failed attempt's work may have been done, and so billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// The request never reached the provider, or the provider answered
    /// that it did not do it (an error status: OpenAI bills no errors).
    NotDone,
    /// The request went out and no usable answer came back (a timeout, a
    /// body cut off, an answer that cannot be read after its 200): the
    /// provider may have done it, and billed it. Counted at the estimate.
    MaybeDone,
}

/// The rule, per cause of failure.
pub fn work(error: &BackendError) -> Work {
    match error {
        // Connection refused, DNS, TLS: nothing was sent. And the gateway's own refusal.
        BackendError::Transport(_) | BackendError::NoCapacity { .. } => Work::NotDone,
        // The provider's error statuses: it says the work was not done.
        BackendError::ContentRefused(_)
        | BackendError::RateLimited { .. }
        | BackendError::ModelNotFound { .. }
        | BackendError::Unauthorized(_)
        | BackendError::BadRequest(_) => Work::NotDone,
        BackendError::Provider { status, .. } if !(200..300).contains(status) => Work::NotDone,
        // An error inside a success answer (a stream's `error` event after
        // its 200): the generation had begun.
        BackendError::Provider { .. } => Work::MaybeDone,
        BackendError::AnswerLost(_) | BackendError::InvalidResponse(_) => Work::MaybeDone,
    }
}

/// A model's prices and what this call is estimated to cost on it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelPrice {
    pub pricing: Pricing,
    pub estimate_usd: f64,
}

/// One attempt's charge.
#[derive(Debug, Clone, PartialEq)]
enum Charge {
    /// It served: what its usage says (else its price per image).
    Served {
        model: String,
        usage: Option<Usage>,
        images: usize,
    },
    /// It may have been done: its estimate.
    Possibly { model: String },
}

/// The charges of one call's attempts: written by the chain, settled by
/// the call's reservation.
#[derive(Debug, Default)]
pub struct Tab {
    /// By model, for the models the call may go to.
    prices: HashMap<String, ModelPrice>,
    state: Mutex<TabState>,
}

#[derive(Debug, Default)]
struct TabState {
    charges: Vec<Charge>,
    /// The model of the attempt under way, if one is.
    open: Option<String>,
    /// The model of the latest attempt (the one whose answer ended the call).
    last: Option<String>,
}

impl Tab {
    pub fn new(prices: HashMap<String, ModelPrice>) -> Self {
        Self {
            prices,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TabState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An attempt on `model` is about to send its request.
    pub fn started(&self, model: &str) {
        let mut state = self.state();
        state.open = Some(model.to_string());
        state.last = Some(model.to_string());
    }

    /// The model the latest attempt went to (e.g. the one that refused).
    pub fn last_model(&self) -> Option<String> {
        self.state().last.clone()
    }

    /// The attempt on `model` ended with `outcome`.
    pub fn ended(&self, model: &str, outcome: &Result<Generation, BackendError>) {
        let mut state = self.state();
        state.open = None;
        let charge = match outcome {
            Ok(generation) => Charge::Served {
                model: model.to_string(),
                usage: generation.usage,
                images: generation.images.len(),
            },
            Err(error) if work(error) == Work::MaybeDone => Charge::Possibly {
                model: model.to_string(),
            },
            Err(_) => return,
        };
        state.charges.push(charge);
    }

    /// What the attempts so far may have cost, in USD. An attempt still
    /// under way (its call dropped or cancelled) counts as possibly done:
    /// its request may have gone out.
    pub fn spent_usd(&self) -> f64 {
        let state = self.state();
        let open = state.open.clone().map(|model| Charge::Possibly { model });
        state.charges.iter().chain(open.as_ref()).map(|c| self.cost(c)).sum()
    }

    fn cost(&self, charge: &Charge) -> f64 {
        match charge {
            Charge::Served { model, usage, images } => self
                .prices
                .get(model)
                .map_or(0.0, |price| price.pricing.cost(*usage, *images).0),
            Charge::Possibly { model } => self.prices.get(model).map_or(0.0, |price| price.estimate_usd),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::GeneratedImage;

    #[test]
    fn what_a_failed_attempt_may_have_cost() {
        let status = |status| BackendError::Provider {
            status,
            message: "m".into(),
        };
        let cases = [
            (
                "connection refused, DNS, TLS: never sent",
                BackendError::Transport("refused".into()),
                Work::NotDone,
            ),
            ("5xx: the provider says not done", status(500), Work::NotDone),
            ("429 insufficient_quota", status(429), Work::NotDone),
            (
                "429 rate limited",
                BackendError::RateLimited {
                    retry_after_secs: Some(1),
                },
                Work::NotDone,
            ),
            (
                "moderation refusal",
                BackendError::ContentRefused("no".into()),
                Work::NotDone,
            ),
            ("bad request", BackendError::BadRequest("size".into()), Work::NotDone),
            ("unauthorized", BackendError::Unauthorized("key".into()), Work::NotDone),
            (
                "retired model",
                BackendError::ModelNotFound {
                    model: "m".into(),
                    setting: "S",
                },
                Work::NotDone,
            ),
            (
                "the gateway's own refusal",
                BackendError::NoCapacity { retry_after_secs: 1 },
                Work::NotDone,
            ),
            (
                "timed out after sending",
                BackendError::AnswerLost("timed out".into()),
                Work::MaybeDone,
            ),
            (
                "body cut off after its 200",
                BackendError::AnswerLost("reset".into()),
                Work::MaybeDone,
            ),
            (
                "unreadable after its 200",
                BackendError::InvalidResponse("json".into()),
                Work::MaybeDone,
            ),
            ("a stream's error event after its 200", status(200), Work::MaybeDone),
        ];
        for (case, error, expected) in cases {
            assert_eq!(work(&error), expected, "{case}");
        }
    }

    fn tab() -> Tab {
        let tokens = Pricing {
            input_per_million_tokens: 5.0,
            output_per_million_tokens: 40.0,
            per_image: 0.04,
        };
        Tab::new(HashMap::from([(
            "gpt-image-2".to_string(),
            ModelPrice {
                pricing: tokens,
                estimate_usd: 0.05,
            },
        )]))
    }

    fn served(usage: Option<Usage>) -> Result<Generation, BackendError> {
        Ok(Generation {
            images: vec![GeneratedImage {
                bytes: bytes::Bytes::new(),
                format: crate::media::types::OutputFormat::Png,
            }],
            model: "gpt-image-2".into(),
            usage,
            quota: None,
        })
    }

    #[test]
    fn lost_attempts_count_at_their_estimate_beside_the_one_that_served() {
        let tab = tab();
        let model = "gpt-image-2";
        tab.started(model);
        tab.ended(model, &Err(BackendError::Transport("refused".into())));
        assert_eq!(tab.spent_usd(), 0.0, "never sent");
        tab.started(model);
        tab.ended(model, &Err(BackendError::AnswerLost("cut off".into())));
        assert_eq!(tab.spent_usd(), 0.05, "possibly billed: the estimate");
        tab.started(model);
        assert_eq!(tab.spent_usd(), 0.10, "an attempt under way may have been sent");
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 1056,
        };
        tab.ended(model, &served(Some(usage)));
        let expected = 0.05 + (10.0 * 5.0 + 1056.0 * 40.0) / 1e6;
        assert!((tab.spent_usd() - expected).abs() < 1e-12, "{}", tab.spent_usd());
        // Without usage, the price per image.
        let per_image = self::tab();
        per_image.ended(model, &served(None));
        assert!((per_image.spent_usd() - 0.04).abs() < 1e-12);
    }
}
