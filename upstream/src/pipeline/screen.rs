//! The content policy on a call's path: the prompt (and, where the policy
//! says so, an edit's inputs) before any image provider is called; the
//! images after generation, before anything is stored or linked; and the
//! one refusal shape shared with the providers' own safety refusals. Every
//! refusal is a metric and an audit event naming the stage, the category
//! and the rule, never the words that matched.

use std::sync::Arc;

use rmcp::model::{CallToolResult, ContentBlock};

use crate::identity::Caller;
use crate::pipeline::run::ImageCall;
use crate::policy::rules::{Policy, Unavailable};
use crate::providers::moderation::ModerationInput;
use crate::providers::{BackendError, Generation};
use crate::state::AppState;
use crate::telemetry::audit::{ContentRefusalEvent, ContentUncheckedEvent};
use crate::telemetry::metrics::RefusalLabels;

/// Where a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before any image provider was called.
    Prompt,
    /// A generated image, before it was stored.
    Image,
    /// The image provider's own safety system.
    Provider,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Prompt => "prompt",
            Stage::Image => "image",
            Stage::Provider => "provider",
        }
    }
}

/// Category of a refusal because the moderation model could not answer.
pub const UNAVAILABLE: &str = "moderation_unavailable";
/// Category of a refusal because the moderation model rejected the input
/// as one it cannot check (a 400): refused whatever the policy says of outages.
pub const UNMODERATABLE: &str = "input_not_moderatable";

/// A refusal: what the caller, the audit and the metrics are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub stage: Stage,
    /// A denied-terms category, a moderation category, `moderation_unavailable` or `provider`.
    pub category: String,
    /// `deny_terms`, `moderation:<model>` or `provider:<model>` (the model that refused).
    pub rule: String,
}

impl Refused {
    /// The call's error class: a refusal by the policy is the caller's
    /// answer (outside the error budget); an unreachable moderation model
    /// is the service's failure (inside it).
    pub fn error_class(&self) -> &'static str {
        match (self.stage, self.category.as_str()) {
            (_, UNAVAILABLE) => "moderation_unavailable",
            (Stage::Provider, _) => "content_refused",
            _ => "content_policy",
        }
    }

    /// Whether a rule or a model found something (a term, a flag), rather
    /// than the check failing: only then is a withheld image billed.
    pub fn found_something(&self) -> bool {
        !matches!(self.category.as_str(), UNAVAILABLE | UNMODERATABLE)
    }
}

/// The policy `caller`'s call runs under, from the call's own state
/// snapshot: a policy file changed mid-call does not change it.
pub fn policy_of(state: &AppState, caller: &Caller) -> Arc<Policy> {
    state.policies.for_org(&caller.org)
}

/// Checks the prompt: denied terms first (no network), then the moderation model.
pub async fn prompt(state: &AppState, caller: &Caller, policy: &Policy, call: &ImageCall) -> Result<(), Refused> {
    if let Some(category) = policy.denied_term(&call.args.prompt) {
        return Err(Refused {
            stage: Stage::Prompt,
            category: category.to_string(),
            rule: "deny_terms".into(),
        });
    }
    if !policy.moderates_prompts() {
        return Ok(());
    }
    // The moderation API takes one image per request: the text alone, then
    // each edit input on its own, all at once.
    let mut inputs = vec![ModerationInput::Text(call.args.prompt.clone())];
    if let Some(edit) = call.edit.as_ref().filter(|_| policy.edit_inputs) {
        inputs.extend(edit.images.iter().map(|image| ModerationInput::Image {
            bytes: image.bytes.clone(),
            mime: image.format.mime_type(),
        }));
    }
    let checks = inputs
        .iter()
        .map(|input| moderate(state, caller, policy, Stage::Prompt, std::slice::from_ref(input)));
    first_refusal(futures::future::join_all(checks).await)
}

/// Checks each generated image whose model the policy moderates (one
/// moderation request per image, at once).
pub async fn images(
    state: &AppState,
    caller: &Caller,
    policy: &Policy,
    generation: &Generation,
) -> Result<(), Refused> {
    if !policy.moderates_images_of(&generation.model) {
        return Ok(());
    }
    let checks = generation.images.iter().map(|image| {
        let input = [ModerationInput::Image {
            bytes: image.bytes.clone(),
            mime: image.format.mime_type(),
        }];
        async move { moderate(state, caller, policy, Stage::Image, &input).await }
    });
    first_refusal(futures::future::join_all(checks).await)
}

/// Refused if any check refused; a finding (a flagged category) is named
/// before a failed check, so the caller hears what was found.
fn first_refusal(outcomes: Vec<Result<(), Refused>>) -> Result<(), Refused> {
    let mut refusals: Vec<Refused> = outcomes.into_iter().filter_map(Result::err).collect();
    refusals.sort_by_key(|r| !r.found_something());
    refusals.into_iter().next().map_or(Ok(()), Err)
}

/// The moderation model's verdict under `policy`; when it cannot answer,
/// what the policy says (`when_moderation_unavailable`); an input it
/// rejects is refused whatever the policy says of outages.
async fn moderate(
    state: &AppState,
    caller: &Caller,
    policy: &Policy,
    stage: Stage,
    inputs: &[ModerationInput],
) -> Result<(), Refused> {
    let refused = |category: String| Refused {
        stage,
        category,
        rule: format!("moderation:{}", state.moderator.model()),
    };
    let verdict = state
        .moderator
        .check(stage.as_str(), inputs, caller.trace.as_ref())
        .await
        .and_then(|result| policy.refused_category(&result).map_err(BackendError::InvalidResponse));
    let error = match verdict {
        Ok(None) => return Ok(()),
        Ok(Some(category)) => return Err(refused(category)),
        Err(error) => error,
    };
    if let BackendError::BadRequest(_) = error {
        tracing::warn!(stage = stage.as_str(), error = %error, "the moderation model rejected the input: refused");
        return Err(refused(UNMODERATABLE.into()));
    }
    match policy.when_unavailable {
        Unavailable::Refuse => {
            tracing::warn!(stage = stage.as_str(), error = %error, "moderation unavailable: the policy refuses the call");
            Err(refused(UNAVAILABLE.into()))
        }
        Unavailable::Allow => {
            tracing::warn!(stage = stage.as_str(), error = %error, "moderation unavailable: the policy lets the call through unchecked");
            state
                .metrics
                .moderation_unchecked
                .get_or_create(&RefusalLabels {
                    stage: stage.as_str().into(),
                    category: UNAVAILABLE.into(),
                    org: caller.org.clone(),
                })
                .inc();
            ContentUncheckedEvent {
                request_id: &caller.request_id,
                org: &caller.org,
                user: &caller.user,
                stage: stage.as_str(),
                error_class: error.class(),
                policy: &policy.source,
            }
            .emit();
            Ok(())
        }
    }
}

/// The refusal's metric and audit event (the prompt as its hash only).
pub fn record(state: &AppState, caller: &Caller, prompt: &str, policy: Option<&Policy>, refused: &Refused) {
    state
        .metrics
        .content_refusals
        .get_or_create(&RefusalLabels {
            stage: refused.stage.as_str().into(),
            category: refused.category.clone(),
            org: caller.org.clone(),
        })
        .inc();
    ContentRefusalEvent {
        request_id: &caller.request_id,
        org: &caller.org,
        user: &caller.user,
        stage: refused.stage.as_str(),
        category: &refused.category,
        rule: &refused.rule,
        policy: policy.map(|p| p.source.as_str()),
        prompt_sha256: &crate::telemetry::sha256(prompt.as_bytes()),
    }
    .emit();
}

/// What the caller is told: the stage and category, never the words.
pub fn message(refused: &Refused, provider_says: Option<&str>) -> String {
    let category = &refused.category;
    match (refused.stage, category.as_str()) {
        (Stage::Prompt, UNAVAILABLE) => "The content policy's moderation check is unavailable, and this organisation's policy refuses prompts it cannot check. Nothing was generated or billed; try again shortly.".to_string(),
        (Stage::Prompt, UNMODERATABLE) => "The content policy's moderation model could not check this input (it rejected it as unreadable), so it was refused. Nothing was generated or billed; check the prompt and the input images.".to_string(),
        (Stage::Prompt, _) => format!(
            "The prompt was refused by this organisation's content policy (category: {category}). Nothing was generated or billed; rephrase the prompt."
        ),
        (Stage::Image, UNAVAILABLE | UNMODERATABLE) => "The generated image could not be checked (the content policy's moderation check failed) and this organisation's policy withholds unchecked images: it was not stored or linked, and it is not billed; try again shortly.".to_string(),
        (Stage::Image, _) => format!(
            "The generated image was withheld by this organisation's content policy (category: {category}): it was not stored or linked. The provider's charge for it is billed; rephrase the prompt."
        ),
        (Stage::Provider, _) => format!(
            "The request was refused by the image provider's content policy (category: {category}){}. Nothing was generated; rephrase the prompt. Other models were not tried.",
            provider_says.map(|m| format!(": {m}")).unwrap_or_default()
        ),
    }
}

/// The refusal as the stage and category a client can act on (`structuredContent`).
pub fn details(refused: &Refused) -> serde_json::Value {
    serde_json::json!({
        "error": "content_policy",
        "stage": refused.stage.as_str(),
        "category": refused.category,
    })
}

/// The refusal as a tool error (`isError: true`) with its details.
pub fn tool_error(refused: &Refused, provider_says: Option<&str>) -> CallToolResult {
    let mut result = CallToolResult::error(vec![ContentBlock::text(message(refused, provider_says))]);
    result.structured_content = Some(details(refused));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_category_and_what_happened() {
        let refused = |stage, category: &str| Refused {
            stage,
            category: category.into(),
            rule: "deny_terms".into(),
        };
        let prompt = message(&refused(Stage::Prompt, "weapons"), None);
        assert!(prompt.contains("category: weapons") && prompt.contains("Nothing was generated or billed"));
        let image = message(&refused(Stage::Image, "violence"), None);
        assert!(image.contains("not stored or linked") && image.contains("billed"));
        let provider = message(&refused(Stage::Provider, "provider"), Some("safety system"));
        assert!(provider.contains("content policy (category: provider): safety system"));
        assert_eq!(details(&refused(Stage::Image, "violence"))["stage"], "image");
        // A withheld image is billed only when the check found something.
        assert!(refused(Stage::Image, "violence").found_something());
        for failed in [UNAVAILABLE, UNMODERATABLE] {
            assert!(!refused(Stage::Image, failed).found_something());
            let text = message(&refused(Stage::Image, failed), None);
            assert!(text.contains("not billed"), "{text}");
        }
        let text = message(&refused(Stage::Prompt, UNMODERATABLE), None);
        assert!(text.contains("could not check this input"), "{text}");
    }
}
