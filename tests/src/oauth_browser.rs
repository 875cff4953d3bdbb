//! A browser for the sign-in pages, driven by hand: it keeps the sign-in
//! cookie, follows nothing by itself, and submits the development sign-in
//! and consent forms (the tests of refusals, and traffic for the dashboard).

use std::collections::HashMap;

use mcp_image_gateway::authorize::grants::pkce_challenge;

use crate::Stack;

/// What a browser keeps between requests here: the sign-in cookie.
pub struct Browser {
    pub cookie: Option<String>,
    http: reqwest::Client,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        Self {
            cookie: None,
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> (u16, Option<String>, String) {
        let request = match &self.cookie {
            Some(cookie) => request.header("cookie", cookie),
            None => request,
        };
        let response = request.send().await.unwrap();
        if let Some(set) = response.headers().get("set-cookie").and_then(|v| v.to_str().ok()) {
            self.cookie = set.split(';').next().map(str::to_string);
        }
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (response.status().as_u16(), location, response.text().await.unwrap())
    }

    pub async fn get(&mut self, url: &str) -> (u16, Option<String>, String) {
        let request = self.http.get(url);
        self.send(request).await
    }

    /// A form post with extra headers (which replace the browser's own).
    pub async fn send_with(
        &mut self,
        url: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> (u16, Option<String>, String) {
        let mut request = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(fields));
        let saved = self.cookie.clone();
        for (name, value) in headers {
            if *name == "cookie" {
                self.cookie = None;
            }
            request = request.header(*name, *value);
        }
        let answer = self.send(request).await;
        self.cookie = saved;
        answer
    }

    pub async fn post(&mut self, url: &str, fields: &[(&str, &str)]) -> (u16, Option<String>, String) {
        let request = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(fields));
        self.send(request).await
    }
}

pub fn form(fields: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://form/").unwrap();
    url.query_pairs_mut().extend_pairs(fields);
    url.query().unwrap_or_default().to_string()
}

pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no {name} in {html}")) + marker.len();
    html[start..].split('"').next().unwrap_or_default().to_string()
}

pub fn query_of(location: &str) -> HashMap<String, String> {
    reqwest::Url::parse(location)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub const REDIRECT: &str = "http://127.0.0.1:40111/callback";
pub const VERIFIER: &str = "a-verifier-of-at-least-forty-three-characters-long";

pub fn authorize_url(stack: &Stack, client_id: &str, redirect: &str, extra: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse(&format!("{}/oauth/authorize", stack.base_url)).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect)
        .append_pair("code_challenge", &pkce_challenge(VERIFIER))
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", "st-1")
        .append_pair("resource", &stack.mcp_url)
        .extend_pairs(extra);
    url.to_string()
}

/// The development sign-in by hand: authorize, sign in, consent; the redirect's query.
pub async fn dev_code(stack: &Stack, client_id: &str) -> HashMap<String, String> {
    let mut browser = Browser::new();
    let (status, _, html) = browser.get(&authorize_url(stack, client_id, REDIRECT, &[])).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("value=\"alice\"") && html.contains("value=\"acme\""),
        "prefilled: {html}"
    );
    let pending = hidden(&html, "pending");
    let (status, _, html) = browser
        .post(
            &format!("{}/oauth/sign-in", stack.base_url),
            &[("pending", &pending), ("user", "erin"), ("org", "acme")],
        )
        .await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Allow access?") && html.contains("erin"), "{html}");
    let (status, location, _) = browser
        .post(
            &format!("{}/oauth/consent", stack.base_url),
            &[("pending", &pending), ("decision", "allow")],
        )
        .await;
    assert_eq!(status, 303);
    let location = location.unwrap();
    assert!(location.starts_with(REDIRECT), "{location}");
    query_of(&location)
}
