//! Where a request is in the filter: the stream state both glues
//! (`envoy_wasm`, `envoy_native`) keep between Envoy's callbacks.

use crate::gate::HeldRequest;
use crate::reply::Reject;

/// Where a request is in the filter.
pub enum StreamState {
    /// Waiting for the request headers.
    Headers,
    /// An MCP POST held until its body has been checked.
    HoldingForBody(Box<HeldRequest>),
    /// Refused on its headers; held only to read the request id from the body.
    RejectingAfterBody(Box<Reject>),
    /// Checked locally; held until the global rate-limit service answers.
    AwaitingGlobalLimit(ChargedImages),
    /// Forwarded; later callbacks only watch the body size.
    Forwarded,
    /// A local reply was sent.
    Replied,
}

/// Images a held call has charged to the local daily quota, to give back
/// if the global limit refuses it.
pub struct ChargedImages {
    pub org: String,
    pub images: u64,
    pub charged_at_ms: u64,
}
