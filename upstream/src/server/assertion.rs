//! The `/mcp` route's gate: no MCP request runs without the edge's valid,
//! fresh, unused identity assertion. It is the route's outermost layer and
//! reads headers only: a refused request's body is never read.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::identity::{AssertionError, HEADER};
use crate::state::AppState;

/// Axum middleware on `/mcp`: refuses a request without a valid, fresh,
/// unused assertion (401), else hands the verified [`Caller`] to the handlers
/// as a request extension (the timing layer adds its trace ids).
///
/// The check runs before the returned future: what it holds while the call
/// runs is the request and the rest of the route, not the state or verdict.
pub fn require_assertion(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> impl std::future::Future<Output = Response> {
    let refused = refusal(&state, &mut request);
    async move {
        match refused {
            None => next.run(request).await,
            Some(refused) => refused,
        }
    }
}

/// Verifies the request's assertion and puts its caller on the request;
/// else the 401 to answer.
fn refusal(state: &AppState, request: &mut Request) -> Option<Response> {
    let token = request.headers().get(HEADER).and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let verdict = match token {
        None => Err(AssertionError::Missing),
        Some(token) => state.identity.verify(token, now),
    };
    state.metrics.identity_assertion(match &verdict {
        Ok(_) => "ok",
        Err(error) => error.label(),
    });
    match verdict {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            None
        }
        Err(error) => {
            tracing::warn!(
                reason = error.label(),
                "refused a request without a valid identity assertion"
            );
            let body = serde_json::json!({
                "jsonrpc": "2.0",
                "id": null,
                "error": {"code": -32001, "message": format!("Unauthorized: {error}")},
            });
            Some((http::StatusCode::UNAUTHORIZED, axum::Json(body)).into_response())
        }
    }
}
