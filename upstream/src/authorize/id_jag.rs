//! Identity Assertion JWT Authorization Grants (ID-JAG; the MCP extension
//! `io.modelcontextprotocol/enterprise-managed-authorization`, SEP-990): a
//! client already signed in to the company IdP gets from it, by token
//! exchange (RFC 8693), a JWT naming this authorization server, the client
//! and the MCP resource, and presents it here with the JWT bearer grant
//! (RFC 7523). The IdP decides which clients may reach this server; we
//! check that the assertion is the IdP's (signature, issuer, expiry: the
//! IdP's verifier) and that it is meant for us, for this client and resource.

use serde_json::{Map, Value};

use super::grants::OAuthError;

/// The JWT `typ` of an ID-JAG.
pub const TYP: &str = "oauth-id-jag+jwt";

/// Checks what the signature does not: the type, the client and the resource.
/// `claims` and `header` are those of an assertion whose signature, issuer,
/// audience (this server) and times already verified.
pub fn check(
    header: &Map<String, Value>,
    claims: &Map<String, Value>,
    client_id: &str,
    resource: &str,
) -> Result<(), OAuthError> {
    if header.get("typ").and_then(Value::as_str) != Some(TYP) {
        return Err(OAuthError::new(
            "invalid_grant",
            format!("the assertion is not an identity assertion grant (typ must be {TYP})"),
        ));
    }
    if claims.get("client_id").and_then(Value::as_str) != Some(client_id) {
        return Err(OAuthError::new(
            "invalid_grant",
            "the assertion was issued for another client",
        ));
    }
    let named = claims.get("resource").and_then(Value::as_str);
    if named.map(|r| r.trim_end_matches('/')) != Some(resource.trim_end_matches('/')) {
        return Err(OAuthError::new(
            "invalid_target",
            format!("the assertion is not for {resource}"),
        ));
    }
    if claims.get("jti").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(OAuthError::new("invalid_grant", "the assertion has no jti"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn an_assertion_must_be_an_id_jag_for_this_client_and_resource() {
        let header = map(json!({"typ": TYP, "alg": "ES256"}));
        let claims = map(json!({"client_id": "c", "resource": "https://gw/mcp", "jti": "j"}));
        assert_eq!(check(&header, &claims, "c", "https://gw/mcp"), Ok(()));
        let jwt = map(json!({"typ": "JWT"}));
        assert_eq!(
            check(&jwt, &claims, "c", "https://gw/mcp").unwrap_err().code,
            "invalid_grant"
        );
        assert_eq!(
            check(&header, &claims, "d", "https://gw/mcp").unwrap_err().code,
            "invalid_grant"
        );
        assert_eq!(
            check(&header, &claims, "c", "https://other/mcp").unwrap_err().code,
            "invalid_target"
        );
        let no_jti = map(json!({"client_id": "c", "resource": "https://gw/mcp"}));
        assert_eq!(
            check(&header, &no_jti, "c", "https://gw/mcp").unwrap_err().code,
            "invalid_grant"
        );
    }
}
