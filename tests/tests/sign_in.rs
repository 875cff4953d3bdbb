//! Sign-in as MCP clients do it, through Envoy: the official SDKs' OAuth
//! clients follow the edge's 401 to the gateway's authorization server (the
//! development sign-in of `make run`, or a real OpenID provider — npm
//! `oidc-provider` — behind it), register, sign in, consent, call tools,
//! refresh and step up; and every way of getting it wrong is refused with
//! the spec's error and audited.

use axum::routing::get;
use gateway_tests::oauth_browser::{authorize_url, dev_code, form, hidden, query_of, Browser, REDIRECT, VERIFIER};
use gateway_tests::stack::{http_client, run_client, Edge};
use gateway_tests::test_idp::{Profile, TestIdp};
use gateway_tests::{Stack, StackOptions};
use jwt_simple::prelude::*;
use serde_json::{json, Value};

fn dev_sign_in() -> Option<Vec<(String, String)>> {
    Some(vec![
        ("GATEWAY_AUTHZ_DEV_SIGN_IN".into(), "true".into()),
        ("GATEWAY_AUTHZ_CIMD_ALLOW_LOOPBACK".into(), "true".into()),
        ("GATEWAY_AUTHZ_SCOPES".into(), "images:generate,images:edit".into()),
    ])
}

fn python_sign_in(stack: &Stack, login: &str, org: &str, step_up: Option<&str>) -> Value {
    let mut args = vec![
        "tests/clients/python_oauth_client.py",
        stack.mcp_url.as_str(),
        login,
        org,
    ];
    args.extend(step_up);
    run_client(".venv/bin/python", &args)
}

/// The authorization server's audit lines (JSON), by action.
fn audit(stack: &Stack, action: &str) -> Vec<Value> {
    std::fs::read_to_string(stack.state_dir.join("authorize.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "audit" && line["fields"]["action"] == action)
        .map(|line| line["fields"].clone())
        .collect()
}

fn authorize_log(stack: &Stack) -> String {
    std::fs::read_to_string(stack.state_dir.join("authorize.log")).unwrap_or_default()
}

fn check_signed_in(report: &Value, tools: usize, sign_ins: u64) {
    assert_eq!(report["tools"].as_array().map(Vec::len), Some(tools), "{report}");
    assert_eq!(report["generated"], true, "{report}");
    assert_eq!(report["sign_ins_before_refresh"], sign_ins, "{report}");
    assert_eq!(report["refreshed"], true, "a refresh replaced the token: {report}");
    assert_eq!(
        report["sign_ins_after_refresh"], sign_ins,
        "the refresh needed no person: {report}"
    );
}

#[tokio::test]
async fn the_python_sdk_signs_in_with_the_development_sign_in_refreshes_and_steps_up() {
    let options = StackOptions {
        authorize: dev_sign_in(),
        // `create_upload` needs a scope the first sign-in does not ask for.
        filter_patch: json!({"tool_access": {"scopes": {"create_upload": "images:edit"}}}),
        ..Default::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    let report = python_sign_in(&stack, "dana", "globex", Some("create_upload"));
    // tools/list leaves out create_upload: this token cannot call it yet.
    check_signed_in(&report, 3, 1);
    let client_id = report["client_id"].as_str().unwrap();
    assert!(client_id.starts_with("mcpc."), "registered dynamically: {report}");
    // Step-up: a 403 insufficient_scope, one more sign-in with the union of scopes.
    assert_eq!(report["step_up_ok"], true, "{report}");
    assert_eq!(report["sign_ins_after_step_up"], 2, "{report}");
    let scope = report["scope_after_step_up"].as_str().unwrap_or_default();
    assert!(
        scope.contains("images:generate") && scope.contains("images:edit"),
        "{report}"
    );

    // The edge saw dana of globex: the upstream's audit names them.
    let upstream_log = std::fs::read_to_string(stack.state_dir.join("upstream.log")).unwrap();
    assert!(
        upstream_log.lines().any(|l| l.contains("\"tool_call\"")
            && l.contains("\"user\":\"dana\"")
            && l.contains("\"org\":\"globex\"")),
        "the tool call is dana's of globex"
    );
    // Sign-ins and tokens are audited with a pseudonym, never the user id or a secret.
    let sign_ins = audit(&stack, "sign_in");
    assert_eq!(sign_ins.len(), 2, "{sign_ins:?}");
    assert!(sign_ins
        .iter()
        .all(|e| e["org"] == "globex" && e["outcome"] == "success" && e["client_id"] == client_id));
    let pseudonym = sign_ins[0]["user_pseudonym"].as_str().unwrap();
    assert_eq!(pseudonym.len(), 24);
    let tokens = audit(&stack, "token");
    assert!(
        tokens
            .iter()
            .any(|e| e["grant"] == "refresh_token" && e["outcome"] == "success"),
        "{tokens:?}"
    );
    let log = authorize_log(&stack);
    assert!(
        !log.contains("\"dana\""),
        "the user id stays out of the authorization audit"
    );
    let metrics = http_client()
        .get(format!("{}/metrics", stack.authorize_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mcp_authz_sign_ins_total{idp=\"dev\",outcome=\"success\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mcp_authz_token_requests_total{grant=\"refresh_token\",outcome=\"issued\"} 1"),
        "{metrics}"
    );
}

/// (The TypeScript SDK 1.32 answers a 403 `insufficient_scope` with a
/// refresh, which cannot widen a grant, then gives up: its step-up is not
/// tested here; the Python SDK's is, above.)
#[tokio::test]
async fn the_typescript_sdk_signs_in_with_the_development_sign_in_and_refreshes() {
    let options = StackOptions {
        authorize: dev_sign_in(),
        edge: Edge::DynamicModule,
        ..Default::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    let report = run_client(
        "node",
        &["tests/clients/ts_oauth_client.mjs", &stack.mcp_url, "gus", "acme"],
    );
    check_signed_in(&report, 4, 1);
}

async fn token(stack: &Stack, fields: &[(&str, &str)]) -> (u16, Value) {
    let response = http_client()
        .post(format!("{}/oauth/token", stack.base_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(fields))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn register(stack: &Stack, body: Value) -> (u16, Value) {
    let response = http_client()
        .post(format!("{}/oauth/register", stack.base_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn tools_list(stack: &Stack, access_token: &str) -> u16 {
    http_client()
        .post(&stack.mcp_url)
        .header("authorization", format!("Bearer {access_token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Serves one client metadata document at /client.json (and a huge one at /big.json).
async fn serve_client_document(redirect: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let document = json!({
        "client_id": format!("{base}/client.json"),
        "client_name": "Docs Client (metadata document)",
        "redirect_uris": [redirect],
        "token_endpoint_auth_method": "none",
    })
    .to_string();
    let json_of = |body: String| ([("content-type", "application/json")], body);
    let big = json!({"client_id": format!("{base}/big.json"), "pad": "x".repeat(20_000)}).to_string();
    let text = json!({"client_id": format!("{base}/text.json"), "redirect_uris": [redirect]}).to_string();
    let moved = format!("{base}/client.json");
    let app = axum::Router::new()
        .route("/client.json", get(move || async move { json_of(document) }))
        .route("/big.json", get(move || async move { json_of(big) }))
        // The right document, but as text: not a metadata document.
        .route("/text.json", get(move || async move { text }))
        .route(
            "/moved.json",
            get(move || async move { axum::response::Redirect::temporary(&moved) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test]
async fn the_authorization_server_refuses_what_the_specs_refuse_and_audits_it() {
    let mut env = dev_sign_in().unwrap();
    env.push(("GATEWAY_AUTHZ_REQUESTS_PER_MINUTE".into(), "80".into()));
    let options = StackOptions {
        authorize: Some(env),
        ..Default::default()
    };
    let stack = Stack::start_with(options).await.unwrap();

    // Metadata on the gateway's origin names a server that exists.
    let prm: Value = http_client()
        .get(format!("{}/.well-known/oauth-protected-resource/mcp", stack.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let issuer = format!("{}/", stack.base_url);
    assert_eq!(prm["authorization_servers"], json!([issuer]));
    let metadata: Value = http_client()
        .get(format!("{}/.well-known/oauth-authorization-server", stack.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["issuer"], issuer);
    assert_eq!(metadata["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(metadata["client_id_metadata_document_supported"], true);
    assert_eq!(metadata["authorization_response_iss_parameter_supported"], true);

    // Registration: a good one, and one whose redirect URI no browser can safely reach.
    let (status, client) = register(&stack, json!({"redirect_uris": [REDIRECT], "client_name": "Refusals"})).await;
    assert_eq!(status, 201, "{client}");
    let client_id = client["client_id"].as_str().unwrap().to_string();
    let (status, refused) = register(&stack, json!({"redirect_uris": ["http://evil.example/cb"]})).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (400, Some("invalid_redirect_uri")),
        "{refused}"
    );

    // A code: single use, for its client, redirect URI and verifier only.
    let answer = dev_code(&stack, &client_id).await;
    assert_eq!(answer.get("state").map(String::as_str), Some("st-1"));
    assert_eq!(answer.get("iss"), Some(&issuer), "RFC 9207");
    let code = answer["code"].clone();
    let (status, error) = token(
        &stack,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &client_id),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &"w".repeat(43)),
        ],
    )
    .await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("invalid_grant")),
        "wrong verifier: {error}"
    );
    let (status, error) = token(
        &stack,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &client_id),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("invalid_grant")),
        "a code tried once is spent: {error}"
    );
    let code = dev_code(&stack, &client_id).await["code"].clone();
    let good = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("client_id", client_id.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let (status, tokens) = token(&stack, &good).await;
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(tools_list(&stack, access).await, 200, "the edge takes the token");
    let (status, error) = token(&stack, &good).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("invalid_grant")),
        "replayed code: {error}"
    );
    let (status, error) = token(
        &stack,
        &[
            ("grant_type", "authorization_code"),
            ("code", "forged"),
            ("client_id", &client_id),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("invalid_grant")),
        "forged code: {error}"
    );
    // Refresh tokens rotate: the old one is spent.
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let refresh_form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh),
        ("client_id", client_id.as_str()),
        ("resource", stack.mcp_url.as_str()),
    ];
    let (status, refreshed) = token(&stack, &refresh_form).await;
    assert_eq!(status, 200, "{refreshed}");
    let (status, error) = token(&stack, &refresh_form).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("invalid_grant")),
        "{error}"
    );
    // That replay revoked the whole sign-in: the newer refresh token is dead too.
    assert!(
        error["error_description"].as_str().unwrap().contains("revoked"),
        "{error}"
    );
    let newer = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refreshed["refresh_token"].as_str().unwrap()),
        ("client_id", client_id.as_str()),
    ];
    let (status, error) = token(&stack, &newer).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("invalid_grant")),
        "{error}"
    );
    let (status, error) = token(&stack, &[("grant_type", "password"), ("client_id", &client_id)]).await;
    assert_eq!((status, error["error"].as_str()), (400, Some("unsupported_grant_type")));
    let (status, error) = token(
        &stack,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_id", "mcpc.nope"),
        ],
    )
    .await;
    assert_eq!((status, error["error"].as_str()), (401, Some("invalid_client")));

    // Authorization requests: an unregistered redirect URI is never redirected to.
    let mut browser = Browser::new();
    let (status, location, html) = browser
        .get(&authorize_url(&stack, &client_id, "http://127.0.0.1:40111/other", &[]))
        .await;
    assert_eq!((status, location), (400, None), "{html}");
    // Errors after the redirect URI checked out are shown, with a link back
    // to the client carrying the error, state and iss — never an automatic
    // redirect (no open redirect through a registered client).
    let other_resource = authorize_url(&stack, &client_id, REDIRECT, &[]).replace(
        &format!("resource={}", form(&[("r", &stack.mcp_url)]).trim_start_matches("r=")),
        "resource=https%3A%2F%2Fother.example%2Fmcp",
    );
    let back_link = |html: &str| {
        let start = html
            .find("<a href=\"")
            .unwrap_or_else(|| panic!("no link back: {html}"))
            + 9;
        html[start..].split('"').next().unwrap().replace("&amp;", "&")
    };
    let (status, location, html) = browser.get(&other_resource).await;
    assert_eq!((status, location), (400, None), "{html}");
    let query = query_of(&back_link(&html));
    assert_eq!(query.get("error").map(String::as_str), Some("invalid_target"));
    assert_eq!(query.get("iss"), Some(&issuer));
    assert_eq!(query.get("state").map(String::as_str), Some("st-1"));
    let mut plain = authorize_url(&stack, &client_id, REDIRECT, &[]);
    plain = plain.replace("code_challenge_method=S256", "code_challenge_method=plain");
    let (status, _, html) = browser.get(&plain).await;
    assert_eq!(status, 400);
    assert_eq!(
        query_of(&back_link(&html)).get("error").map(String::as_str),
        Some("invalid_request")
    );
    // A consent posted from another site, or from a browser that did not start the sign-in.
    let (_, _, html) = browser.get(&authorize_url(&stack, &client_id, REDIRECT, &[])).await;
    let pending = hidden(&html, "pending");
    let (status, _, _) = Browser::new()
        .post(
            &format!("{}/oauth/sign-in", stack.base_url),
            &[("pending", &pending), ("user", "x"), ("org", "acme")],
        )
        .await;
    assert_eq!(status, 403, "another browser");
    let (status, _, _) = browser
        .send_with(
            &format!("{}/oauth/sign-in", stack.base_url),
            &[("pending", &pending), ("user", "x"), ("org", "acme")],
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(status, 403, "another site");
    let (status, _, _) = browser
        .send_with(
            &format!("{}/oauth/sign-in", stack.base_url),
            &[("pending", &pending), ("user", "x"), ("org", "acme")],
            &[(
                "cookie",
                &format!("mcp_authz={pending}; {}", browser.cookie.clone().unwrap_or_default()),
            )],
        )
        .await;
    assert_eq!(status, 403, "a second, planted sign-in cookie");
    let (status, _, _) = browser
        .post(
            &format!("{}/oauth/consent", stack.base_url),
            &[("pending", "not-an-id"), ("decision", "allow")],
        )
        .await;
    assert_eq!(status, 400, "an id of the wrong shape never reaches the store");

    // Client ID Metadata Documents: fetched, bounded, never from private addresses.
    let documents = serve_client_document(REDIRECT).await;
    let document_id = format!("{documents}/client.json");
    let mut browser = Browser::new();
    let (status, _, html) = browser.get(&authorize_url(&stack, &document_id, REDIRECT, &[])).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Docs Client (metadata document)"), "{html}");
    let (status, _, html) = browser
        .get(&authorize_url(
            &stack,
            &document_id,
            "http://127.0.0.1:40111/not-listed",
            &[],
        ))
        .await;
    assert_eq!(status, 400, "redirect URIs of a document match exactly: {html}");
    let (status, _, html) = browser
        .get(&authorize_url(&stack, &format!("{documents}/big.json"), REDIRECT, &[]))
        .await;
    assert!(status == 400 && html.contains("larger than"), "{html}");
    for private in [
        "http://169.254.169.254/latest/client.json",
        "https://10.1.2.3/client.json",
    ] {
        let (status, _, html) = browser.get(&authorize_url(&stack, private, REDIRECT, &[])).await;
        assert!(
            status == 400 && html.contains("does not resolve to a public address") && !html.contains("10.1.2.3,"),
            "{private}: {html}"
        );
    }
    for (path, reason) in [("text.json", "application/json"), ("moved.json", "redirect")] {
        let (status, _, html) = browser
            .get(&authorize_url(&stack, &format!("{documents}/{path}"), REDIRECT, &[]))
            .await;
        assert!(status == 400 && html.contains(reason), "{path}: {html}");
    }

    // Every refusal is audited with its error code, never a secret.
    let refusals: Vec<String> = audit(&stack, "token")
        .iter()
        .chain(audit(&stack, "authorize").iter())
        .chain(audit(&stack, "register").iter())
        .filter_map(|e| e["outcome"].as_str().map(str::to_string))
        .collect();
    for code in [
        "invalid_grant",
        "unsupported_grant_type",
        "invalid_client",
        "invalid_target",
        "invalid_request",
        "invalid_redirect_uri",
        "invalid_client_metadata",
    ] {
        assert!(refusals.iter().any(|r| r == code), "{code} audited: {refusals:?}");
    }
    let log = authorize_log(&stack);
    for secret in [access, refresh, code.as_str(), VERIFIER] {
        assert!(!log.contains(secret), "a secret reached the log");
    }

    // Per client IP: too many requests get 429 with Retry-After.
    let mut limited = None;
    for _ in 0..100 {
        let response = http_client()
            .get(format!("{}/oauth/authorize", stack.base_url))
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            break;
        }
    }
    assert_eq!(limited.as_deref(), Some("60"));
}

/// The IdP profiles without dynamic registration: the gateway fronts them.
async fn through_the_gateway(profile: Profile, extra: &[(&str, &str)], edge: Edge) -> (Stack, TestIdp) {
    let idp_port = gateway_tests::stack::free_port();
    let mut env = vec![
        ("IDP_ISSUER".to_string(), TestIdp::issuer_at(idp_port)),
        ("IDP_CLIENT_ID".to_string(), "mcp-gateway".to_string()),
        ("IDP_CLIENT_SECRET".to_string(), "gateway-secret".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let options = StackOptions {
        authorize: Some(env),
        edge,
        ..Default::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    let idp = TestIdp::start(profile, idp_port, &format!("{}/oauth/callback", stack.base_url));
    (stack, idp)
}

#[tokio::test]
async fn the_python_sdk_signs_in_through_the_gateway_at_an_idp_without_registration() {
    let (stack, idp) = through_the_gateway(Profile::Confidential, &[], Edge::DynamicModule).await;
    let report = python_sign_in(&stack, "frank@initech", "ignored", None);
    check_signed_in(&report, 4, 1);
    // The organisation is the IdP's `org` claim, not what the client says.
    let upstream_log = std::fs::read_to_string(stack.state_dir.join("upstream.log")).unwrap();
    assert!(
        upstream_log.lines().any(|l| l.contains("\"tool_call\"")
            && l.contains("\"user\":\"frank@initech\"")
            && l.contains("\"org\":\"initech\"")),
        "{}",
        idp.log()
    );
    let sign_ins = audit(&stack, "sign_in");
    assert_eq!(sign_ins.len(), 1);
    assert_eq!(sign_ins[0]["idp"], idp.issuer);
    assert_eq!(sign_ins[0]["org"], "initech");
}

#[tokio::test]
async fn identity_assertion_grants_trade_the_idps_assertion_for_a_token_without_a_browser() {
    let (stack, idp) = through_the_gateway(Profile::Confidential, &[], Edge::Wasm).await;
    let metadata: Value = http_client()
        .get(format!("{}/.well-known/oauth-authorization-server", stack.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(metadata["grant_types_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("urn:ietf:params:oauth:grant-type:jwt-bearer")));
    let issuer = format!("{}/", stack.base_url);
    // An agent registered with a secret: it proves who it is when it trades.
    let (status, client) = register(
        &stack,
        json!({"redirect_uris": [REDIRECT], "client_name": "Agent", "token_endpoint_auth_method": "client_secret_post",
               "grant_types": ["urn:ietf:params:oauth:grant-type:jwt-bearer"]}),
    )
    .await;
    assert_eq!(status, 201, "{client}");
    let client_id = client["client_id"].as_str().unwrap().to_string();
    let secret = client["client_secret"].as_str().unwrap().to_string();
    let grant = |assertion: &str| {
        vec![
            (
                "grant_type".to_string(),
                "urn:ietf:params:oauth:grant-type:jwt-bearer".to_string(),
            ),
            ("assertion".to_string(), assertion.to_string()),
            ("client_id".to_string(), client_id.clone()),
            ("client_secret".to_string(), secret.clone()),
        ]
    };
    let send = |fields: Vec<(String, String)>| {
        let stack = &stack;
        async move {
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            token(stack, &pairs).await
        }
    };
    // A public client may not trade an assertion (it is a bearer credential).
    let (_, public) = register(&stack, json!({"redirect_uris": [REDIRECT]})).await;
    let public_id = public["client_id"].as_str().unwrap();
    let for_public = idp.id_jag(&issuer, public_id, &stack.mcp_url, |_| {});
    let (status, error) = token(
        &stack,
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", &for_public),
            ("client_id", public_id),
        ],
    )
    .await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{error}"
    );
    // No more scope than the IdP granted in the assertion.
    let modest = idp.id_jag(&issuer, &client_id, &stack.mcp_url, |c| c.custom["scope"] = json!(""));
    let mut wider = grant(&modest);
    wider.push(("scope".into(), "images:generate".into()));
    let (status, error) = send(wider).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("invalid_scope")),
        "{error}"
    );
    let good = idp.id_jag(&issuer, &client_id, &stack.mcp_url, |_| {});
    let (status, tokens) = send(grant(&good)).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tools_list(&stack, tokens["access_token"].as_str().unwrap()).await, 200);
    assert!(tokens.get("refresh_token").is_none(), "the IdP decides again next time");
    let (status, error) = send(grant(&good)).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("invalid_grant")),
        "replayed: {error}"
    );
    let wrong: Vec<(&str, String)> = vec![
        (
            "audience",
            idp.id_jag("https://other-as.example/", &client_id, &stack.mcp_url, |_| {}),
        ),
        (
            "client",
            idp.id_jag(&issuer, "mcpc.someone-else", &stack.mcp_url, |_| {}),
        ),
        (
            "resource",
            idp.id_jag(&issuer, &client_id, "https://other.example/mcp", |_| {}),
        ),
        (
            "issuer",
            idp.id_jag(&issuer, &client_id, &stack.mcp_url, |c| {
                c.issuer = Some("https://evil.example".into())
            }),
        ),
        (
            "expiry",
            idp.id_jag(&issuer, &client_id, &stack.mcp_url, |c| {
                c.expires_at = Some(UnixTimeStamp::from_secs(1_000));
                c.issued_at = Some(UnixTimeStamp::from_secs(900));
                c.invalid_before = Some(UnixTimeStamp::from_secs(900));
            }),
        ),
        ("signer", {
            // The same issuer's name, another key.
            let other = ES256KeyPair::generate().with_key_id("idp-1");
            let claims = Claims::with_custom_claims(
                json!({"client_id": client_id, "resource": stack.mcp_url, "org": "acme"}),
                Duration::from_secs(300),
            )
            .with_issuer(&idp.issuer)
            .with_audience(&issuer)
            .with_subject("mallory")
            .with_jwt_id("forged-1");
            let options = HeaderOptions {
                signature_type: Some("oauth-id-jag+jwt".into()),
                ..Default::default()
            };
            other.sign_with_options(claims, &options).unwrap()
        }),
    ];
    for (what, assertion) in wrong {
        let (status, error) = send(grant(&assertion)).await;
        let code = error["error"].as_str().unwrap_or_default();
        assert!(
            status == 400 && (code == "invalid_grant" || code == "invalid_target"),
            "{what}: {error}"
        );
    }
    let refused = audit(&stack, "token")
        .iter()
        .filter(|e| e["grant"] == "jwt_bearer" && e["outcome"] != "success")
        .count();
    assert!(refused >= 6, "refusals audited: {refused}");
}

/// A Keycloak-like IdP (dynamic registration, resource indicators): MCP
/// clients sign in there directly and the edge trusts its tokens by its
/// keys, fetched through an Envoy cluster; the gateway's authorization
/// server is not involved.
#[tokio::test]
async fn both_sdks_sign_in_directly_at_a_keycloak_like_idp() {
    let idp = TestIdp::start_free(Profile::Keycloak);
    let cluster = format!(
        "  - name: idp_jwks\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: idp_jwks\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n",
        idp.port
    );
    let options = StackOptions {
        extra_clusters: cluster,
        live_settings: true,
        ..Default::default()
    };
    let mut stack = Stack::start_with(options).await.unwrap();
    let mcp_url = stack.mcp_url.clone();
    let issuer = idp.issuer.clone();
    let authority = format!("127.0.0.1:{}", idp.port);
    let sha = stack
        .edit_settings(|settings| {
            settings["jwt"] = json!({
                "issuer": issuer,
                "audiences": [mcp_url],
                "jwks_uri": {"cluster": "idp_jwks", "path": "/jwks", "authority": authority, "refresh_seconds": 60, "retry_seconds": 1},
            });
            settings["protected_resource"]["authorization_servers"] = json!([issuer]);
        })
        .unwrap();
    stack
        .wait_settings(&sha, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let report = python_sign_in(&stack, "hana@umbrella", "ignored", None);
    check_signed_in(&report, 4, 1);
    assert!(
        !report["client_id"].as_str().unwrap_or_default().starts_with("mcpc."),
        "registered at the IdP: {report}"
    );
    let report = run_client(
        "node",
        &[
            "tests/clients/ts_oauth_client.mjs",
            &stack.mcp_url,
            "hana@umbrella",
            "x",
        ],
    );
    check_signed_in(&report, 4, 1);
    let upstream_log = std::fs::read_to_string(stack.state_dir.join("upstream.log")).unwrap();
    assert!(
        upstream_log.lines().any(|l| l.contains("\"tool_call\"")
            && l.contains("\"user\":\"hana@umbrella\"")
            && l.contains("\"org\":\"umbrella\"")),
        "{}",
        idp.log()
    );
}

/// An Entra-like IdP: no registration, OpenID discovery only (no RFC 8414
/// document), `resource` refused at its authorization endpoint, the
/// organisation in `tid`. The TypeScript SDK signs in through the gateway.
#[tokio::test]
async fn both_sdks_sign_in_through_the_gateway_at_an_entra_like_idp() {
    let (stack, idp) = through_the_gateway(
        Profile::Entra,
        &[("IDP_ORG_CLAIM", "/tid"), ("IDP_USER_CLAIM", "oid")],
        Edge::Wasm,
    )
    .await;
    let report = run_client(
        "node",
        &["tests/clients/ts_oauth_client.mjs", &stack.mcp_url, "ivan", "ignored"],
    );
    check_signed_in(&report, 4, 1);
    let report = python_sign_in(&stack, "ivan", "ignored", None);
    check_signed_in(&report, 4, 1);
    // The tenant id of "acme" in the test IdP (test_idp.mjs, tidOf).
    let tid = "61636d65-3030-3030-3030-303030303030";
    let upstream_log = std::fs::read_to_string(stack.state_dir.join("upstream.log")).unwrap();
    assert!(
        upstream_log.lines().any(|l| l.contains("\"tool_call\"")
            && l.contains("\"user\":\"ivan\"")
            && l.contains(&format!("\"org\":\"{tid}\""))),
        "{}",
        idp.log()
    );
    let sign_ins = audit(&stack, "sign_in");
    assert_eq!(sign_ins[0]["org"], tid);
}
