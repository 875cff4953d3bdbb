//! The content policy: one rule per organisation, whichever model answers.
//! `rules` compiles the admin's file (`GATEWAY_CONTENT_POLICY_FILE`) and
//! decides; `terms` is the denied-terms automaton; `moderator` asks the
//! moderation model (with the image models' retries and breaker). The
//! pipeline's `screen` stage applies them to a call. This floor sits above
//! `routing` and `providers`, below `config` and `state`.

pub mod moderator;
pub mod rules;
pub mod terms;
