//! The output cap: upstream responses larger than the limit never reach the
//! client whole. A response that declares its size is replaced by a JSON-RPC
//! error before any byte is sent; a stream (SSE) that grows past the limit
//! is ended with an SSE error event for the request, and the rest dropped.

use serde_json::Value;

use crate::reply::Reject;

/// JSON-RPC internal error.
pub const INTERNAL_ERROR: i32 = -32603;

fn too_large(cap: usize, id: &Value) -> Reject {
    Reject::new(
        502,
        INTERNAL_ERROR,
        "response_too_large",
        format!("The upstream response exceeded the gateway's output limit of {cap} bytes and was not delivered"),
    )
    .with_id(id.clone())
}

/// Checks a response's declared `Content-Length`.
pub fn check_declared_length(cap: usize, content_length: Option<&str>, id: &Value) -> Result<(), Reject> {
    match content_length.and_then(|l| l.trim().parse::<u64>().ok()) {
        Some(length) if length > cap as u64 => Err(too_large(cap, id)),
        _ => Ok(()),
    }
}

/// What to do with one chunk of a streamed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkAction {
    Pass,
    /// Replace the chunk with these bytes (the error event); drop what follows.
    CutOff(String),
    /// Drop the chunk: the stream was already cut off.
    Drop,
}

/// Counts a streamed response's bytes against the cap.
#[derive(Debug, Default)]
pub struct StreamMeter {
    sent: usize,
    cut: bool,
}

impl StreamMeter {
    pub fn on_chunk(&mut self, cap: usize, chunk_len: usize, id: &Value) -> ChunkAction {
        if self.cut {
            return ChunkAction::Drop;
        }
        self.sent = self.sent.saturating_add(chunk_len);
        if self.sent <= cap {
            return ChunkAction::Pass;
        }
        self.cut = true;
        let reject = too_large(cap, id);
        ChunkAction::CutOff(format!("event: message\ndata: {}\n\n", reject.body()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn declared_length() {
        let id = json!(7);
        assert!(check_declared_length(100, Some("100"), &id).is_ok());
        assert!(check_declared_length(100, None, &id).is_ok());
        assert!(check_declared_length(100, Some("junk"), &id).is_ok());
        let reject = check_declared_length(100, Some("101"), &id).unwrap_err();
        assert_eq!((reject.status, reject.code, reject.id), (502, -32603, json!(7)));
    }

    #[test]
    fn stream_is_cut_once_then_dropped() {
        let mut meter = StreamMeter::default();
        let id = json!("a");
        assert_eq!(meter.on_chunk(10, 6, &id), ChunkAction::Pass);
        assert_eq!(meter.on_chunk(10, 4, &id), ChunkAction::Pass);
        let ChunkAction::CutOff(event) = meter.on_chunk(10, 1, &id) else {
            panic!("not cut")
        };
        assert!(event.starts_with("event: message\ndata: {"), "{event}");
        let data: Value = serde_json::from_str(event.trim_end().trim_start_matches("event: message\ndata: ")).unwrap();
        assert_eq!(data["id"], "a");
        assert_eq!(data["error"]["code"], -32603);
        assert_eq!(meter.on_chunk(10, 1, &id), ChunkAction::Drop);
    }
}
