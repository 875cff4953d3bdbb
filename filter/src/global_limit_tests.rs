//! The wire format is checked against envoy-types, the generated Envoy protos.

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use prost::Message;
use serde_json::json;

use super::*;

fn setting(failure_mode: &str) -> GlobalRateLimit {
    let spec: GlobalRateLimitSpec =
        serde_json::from_value(json!({"cluster": "ratelimit", "failure_mode": failure_mode})).unwrap();
    GlobalRateLimit::from_spec(&spec).unwrap()
}

fn caller(key_id: Option<&str>) -> Identity {
    Identity {
        user: "alice".into(),
        org: "acme".into(),
        scopes: vec![],
        expires_at: u64::MAX,
        key_id: key_id.map(str::to_string),
    }
}

#[test]
fn the_request_is_a_ratelimit_v3_request_with_images_as_hits() {
    let global = setting("allow");
    for (identity, expected_caller) in [(caller(Some("k1")), "key:k1"), (caller(None), "user:alice")] {
        let decoded = RateLimitRequest::decode(global.request(&identity, 3).as_slice()).unwrap();
        assert_eq!((decoded.domain.as_str(), decoded.hits_addend), ("mcp-gateway", 3));
        assert_eq!(decoded.descriptors.len(), 1);
        let entries: Vec<(&str, &str)> = decoded.descriptors[0]
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(entries, [("org", "acme"), ("caller", expected_caller)]);
    }
}

fn answer(code: Code, status: Option<DescriptorStatus>) -> Vec<u8> {
    RateLimitResponse {
        overall_code: code as i32,
        statuses: status.into_iter().collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn ok_allows_and_over_limit_is_a_429_that_says_when_to_retry() {
    let global = setting("deny");
    assert_eq!(
        global.decide(0, Some(&answer(Code::Ok, None)), "acme"),
        GlobalVerdict::Allow
    );
    let over = answer(
        Code::OverLimit,
        Some(DescriptorStatus {
            code: Code::OverLimit as i32,
            current_limit: Some(RateLimit {
                name: "org-daily-images".into(),
                requests_per_unit: 5,
                unit: Unit::Day as i32,
            }),
            limit_remaining: 1,
            duration_until_reset: Some(ProtoDuration { seconds: 41, nanos: 5 }),
            quota: None,
        }),
    );
    let GlobalVerdict::Refuse(reject) = global.decide(0, Some(&over), "acme") else {
        panic!("over limit must refuse");
    };
    assert_eq!(
        (reject.status, reject.code, reject.reason),
        (429, -32029, "global_limited")
    );
    assert_eq!(reject.org.as_deref(), Some("acme"));
    let header = |name: &str| {
        reject
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(header("retry-after"), "42");
    assert_eq!(header("ratelimit-policy"), "\"org-daily-images\";q=5;w=86400");
    assert_eq!(header("ratelimit"), "\"org-daily-images\";r=1;t=42");
    assert!(
        reject.message.contains("across all gateway replicas"),
        "{}",
        reject.message
    );
    // A bare OVER_LIMIT (no statuses) still refuses, with a 1 s retry.
    let GlobalVerdict::Refuse(bare) = global.decide(0, Some(&answer(Code::OverLimit, None)), "acme") else {
        panic!("over limit must refuse");
    };
    assert_eq!(
        bare.headers
            .iter()
            .find(|(n, _)| *n == "retry-after")
            .map(|(_, v)| v.as_str()),
        Some("1")
    );
}

#[test]
fn failures_follow_the_failure_mode() {
    let failures: [(u32, Option<&[u8]>); 4] = [
        (14, None),                 // UNAVAILABLE: cluster down
        (4, None),                  // DEADLINE_EXCEEDED
        (0, Some(b"\xff\xff\xff")), // not a RateLimitResponse
        (0, Some(&[8, 0])),         // overall_code UNKNOWN
    ];
    for (status, body) in failures {
        assert!(
            matches!(
                setting("allow").decide(status, body, "acme"),
                GlobalVerdict::AllowUnchecked(_)
            ),
            "{status} {body:?}"
        );
        let GlobalVerdict::Refuse(reject) = setting("deny").decide(status, body, "acme") else {
            panic!("fail closed must refuse: {status} {body:?}");
        };
        assert_eq!((reject.status, reject.code), (503, LIMITER_UNAVAILABLE));
        assert!(reject.headers.contains(&("retry-after", "5".to_string())));
    }
}

#[test]
fn the_setting_is_checked_at_load() {
    let bad = [
        json!({"cluster": ""}),
        json!({"cluster": "rl", "domain": " "}),
        json!({"cluster": "rl", "timeout_ms": 0}),
        json!({"cluster": "rl", "failure_mode": "sometimes"}),
        json!({"cluster": "rl", "unknown": 1}),
    ];
    for spec in bad {
        let outcome = serde_json::from_value::<GlobalRateLimitSpec>(spec.clone())
            .map_err(|e| e.to_string())
            .and_then(|s| GlobalRateLimit::from_spec(&s).map_err(|e| e.to_string()));
        assert!(outcome.is_err(), "{spec}");
    }
    let defaults = setting("allow");
    assert_eq!(
        (
            defaults.domain.as_str(),
            defaults.timeout.as_millis(),
            defaults.failure_mode
        ),
        ("mcp-gateway", 200, FailureMode::Allow)
    );
}
