//! Organisation names the edge refuses. The upstream stores images under
//! `{org}/…` beside prefixes of its own (`uploads/`, `audit/`, `tasks/`, …):
//! an organisation named like one would share that prefix's retention (a
//! day for uploads, 400 days for the audit) and its erasure. The list is the
//! upstream's `storage::store::RESERVED_PREFIXES`; this crate cannot import
//! it, so a test in `tests/` checks the two are equal.

use crate::jsonrpc::code;
use crate::reply::Reject;

/// The upstream store's own top-level prefixes.
pub const RESERVED: [&str; 6] = ["audit", "audit-prompts", "erased", "owners", "tasks", "uploads"];

/// Whether `org` names one of the store's prefixes (in any case: a
/// case-insensitive filesystem would mix them).
pub fn is_reserved(org: &str) -> bool {
    RESERVED.iter().any(|prefix| prefix.eq_ignore_ascii_case(org))
}

/// The refusal of a caller whose organisation has a reserved name: 403,
/// since its credentials are valid but the gateway cannot serve it.
pub fn refusal(org: &str) -> Reject {
    Reject::new(
        403,
        code::UNAUTHORIZED,
        "reserved_org",
        format!(
            "Forbidden: the organisation name {org:?} is reserved for the gateway's own storage ({}); have the identity provider or API key give this organisation another name",
            RESERVED.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_in_any_case_and_no_others() {
        for org in ["uploads", "Audit", "audit-prompts", "TASKS", "owners", "erased"] {
            assert!(is_reserved(org), "{org}");
        }
        for org in ["acme", "uploads2", "my-audit", "audit_prompts"] {
            assert!(!is_reserved(org), "{org}");
        }
        let refused = refusal("uploads");
        assert_eq!((refused.status, refused.reason), (403, "reserved_org"));
        assert!(
            refused.message.contains("\"uploads\" is reserved"),
            "{}",
            refused.message
        );
    }
}
