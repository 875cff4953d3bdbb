//! The pages a person sees while signing in: plain HTML forms that work
//! without JavaScript (the development sign-in, the consent), and the error
//! page shown when the client cannot be redirected to safely.

/// Escapes text for HTML element content and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}\
         label{{display:block;margin:.75rem 0 .25rem}}input[type=text]{{width:100%;padding:.4rem;font-size:1rem}}\
         button{{margin:1rem .5rem 0 0;padding:.5rem 1.2rem;font-size:1rem}}.note{{color:#555;font-size:.9rem}}\
         code{{background:#f2f2f2;padding:0 .2rem}}</style></head>\n<body>\n{body}\n</body></html>\n",
        title = escape(title),
    )
}

/// The development sign-in: a user id and an organisation, prefilled.
pub fn dev_sign_in(pending: &str, client_name: &str, user: &str, org: &str, error: Option<&str>) -> String {
    let error = error.map_or(String::new(), |e| {
        format!("<p role=\"alert\"><strong>{}</strong></p>", escape(e))
    });
    page(
        "Sign in (development)",
        &format!(
            "<h1>Sign in to the MCP image gateway</h1>\
             <p><strong>{client}</strong> wants to use the image tools as you.</p>{error}\
             <form method=\"post\" action=\"/oauth/sign-in\">\
             <input type=\"hidden\" name=\"pending\" value=\"{pending}\">\
             <label for=\"user\">User id</label><input type=\"text\" id=\"user\" name=\"user\" value=\"{user}\" required>\
             <label for=\"org\">Organisation</label><input type=\"text\" id=\"org\" name=\"org\" value=\"{org}\" required>\
             <button type=\"submit\">Continue</button></form>\
             <p class=\"note\">Development sign-in of <code>make run</code>: no password; never deployed. \
             Production sign-in goes through your company's identity provider.</p>",
            client = escape(client_name),
            pending = escape(pending),
            user = escape(user),
            org = escape(org),
        ),
    )
}

/// The consent page: which client, where it will receive the grant, what it may do.
pub fn consent(
    pending: &str,
    client_name: &str,
    client_id: &str,
    redirect_host: &str,
    scopes: &[String],
    who: Option<(&str, &str)>,
) -> String {
    let scope_items: String = scopes
        .iter()
        .map(|s| format!("<li><code>{}</code>{}</li>", escape(s), scope_meaning(s)))
        .collect();
    let who = who.map_or(String::new(), |(user, org)| {
        format!(
            "<p>Signed in as <strong>{}</strong> of <strong>{}</strong>.</p>",
            escape(user),
            escape(org)
        )
    });
    page(
        "Allow access?",
        &format!(
            "<h1>Allow access?</h1>{who}\
             <p><strong>{client}</strong> asks to use the MCP image gateway on your behalf.</p>\
             <ul>{scope_items}</ul>\
             <p class=\"note\">The grant goes to <code>{host}</code>. Client id: <code>{client_id}</code></p>\
             <form method=\"post\" action=\"/oauth/consent\">\
             <input type=\"hidden\" name=\"pending\" value=\"{pending}\">\
             <button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
             <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
            client = escape(client_name),
            host = escape(redirect_host),
            client_id = escape(&shorten(client_id)),
            pending = escape(pending),
        ),
    )
}

/// An error the browser cannot be redirected with (unknown client,
/// unregistered redirect URI: redirecting would be an open redirect).
pub fn error(title: &str, message: &str) -> String {
    page(
        title,
        &format!(
            "<h1>{}</h1><p>{}</p><p class=\"note\">Close this window and start the sign-in again from your MCP client.</p>",
            escape(title),
            escape(message)
        ),
    )
}

/// A refused authorization request: the reason, and a link back to the
/// client with the error (followed only if the person chooses to).
pub fn error_with_return(message: &str, client_name: &str, back: Option<&str>) -> String {
    let back = back.map_or(String::new(), |url| {
        format!(
            "<p><a href=\"{}\">Return to {}</a></p>",
            escape(url),
            escape(client_name)
        )
    });
    page(
        "Sign-in refused",
        &format!("<h1>Sign-in refused</h1><p>{}</p>{back}", escape(message)),
    )
}

fn scope_meaning(scope: &str) -> &'static str {
    match scope {
        "images:generate" => " — generate and edit images, and read the images it made",
        _ => "",
    }
}

/// Registered client ids are long: show the start and the end.
fn shorten(id: &str) -> String {
    if id.chars().count() <= 64 {
        return id.to_string();
    }
    let start: String = id.chars().take(40).collect();
    let end: String = id
        .chars()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{start}…{end}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_client_names_itself_is_escaped() {
        let html = consent(
            "p\"x",
            "<script>alert(1)</script>",
            "c",
            "evil.example",
            &["images:generate".into()],
            Some(("a<b", "acme")),
        );
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("value=\"p&quot;x\""));
        assert!(html.contains("a&lt;b"));
    }
}
