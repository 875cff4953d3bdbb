"""Signs in to the gateway with the official MCP Python SDK's OAuth client
(`mcp.client.auth.OAuthClientProvider`), with no client id and no token: it
follows the 401 to the authorization server the gateway names, registers,
and sends the person to sign in. The person is played by a headless form
filler: it follows redirects and submits each page's first form (the
gateway's development sign-in and consent, or the test IdP's login and
consent), filling `login`/`user` with LOGIN and `org` with ORG, until the
browser is sent back to the client's redirect URI.

Usage: python_oauth_client.py MCP_URL LOGIN ORG [STEP_UP_TOOL]
Prints one JSON object: tools, the generation's result, how many times the
person had to sign in, whether a refresh worked without one, and (with
STEP_UP_TOOL) the step-up's outcome.
"""

import asyncio
import json
import re
import sys
import time
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlparse

import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

REDIRECT_URI = "http://127.0.0.1:33418/callback"


class Memory(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, client_info):
        self.client = client_info


class Forms(HTMLParser):
    """The first form of a page: its action, method, fields and first submit button."""

    def __init__(self) -> None:
        super().__init__()
        self.form: dict | None = None
        self.done = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self.done:
            return
        if tag == "form" and self.form is None:
            self.form = {"action": attrs.get("action", ""), "method": attrs.get("method", "get").lower(), "fields": {}, "button": None}
        elif self.form is not None and tag == "input" and attrs.get("name"):
            self.form["fields"][attrs["name"]] = attrs.get("value", "")
        elif self.form is not None and tag == "button" and self.form["button"] is None:
            self.form["button"] = (attrs.get("name"), attrs.get("value", ""))

    def handle_endtag(self, tag):
        if tag == "form" and self.form is not None:
            self.done = True


class Person:
    """Plays the person at the browser."""

    def __init__(self, login: str, org: str) -> None:
        self.login, self.org = login, org
        self.sign_ins = 0
        self.result: AuthorizationCodeResult | None = None
        self.pages: list[str] = []

    async def redirect(self, url: str) -> None:
        self.sign_ins += 1
        async with httpx2.AsyncClient(timeout=30, follow_redirects=False) as browser:
            method, data = "GET", None
            for _ in range(30):
                response = await browser.request(method, url, data=data)
                self.pages.append(f"{method} {urlparse(url).path} -> {response.status_code}")
                if response.is_redirect:
                    url = urljoin(url, response.headers["location"])
                    method, data = "GET", None
                    if url.startswith(REDIRECT_URI):
                        query = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
                        if "error" in query:
                            raise RuntimeError(f"authorization refused: {query}")
                        self.result = AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))
                        return
                    continue
                forms = Forms()
                forms.feed(response.text)
                form = forms.form
                if response.status_code != 200 or form is None:
                    text = " ".join(re.sub(r"<style[\s\S]*?</style>|<[^>]+>", " ", response.text).split())
                    raise RuntimeError(f"stuck at {url}: HTTP {response.status_code}: {text[:600]}")
                fields = dict(form["fields"])
                for name in ("login", "user"):
                    if name in fields:
                        fields[name] = self.login
                if "org" in fields:
                    fields["org"] = self.org
                if "password" in fields:
                    fields["password"] = "any"
                if form["button"] and form["button"][0]:
                    fields[form["button"][0]] = form["button"][1]
                url = urljoin(url, form["action"] or url)
                method, data = form["method"].upper(), fields
        raise RuntimeError(f"too many steps: {self.pages}")

    async def callback(self) -> AuthorizationCodeResult:
        assert self.result is not None
        result, self.result = self.result, None
        return result


def text_of(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def main(url: str, login: str, org: str, step_up_tool: str | None) -> None:
    person = Person(login, org)
    storage = Memory()
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="gateway sign-in test (Python SDK)",
            redirect_uris=[REDIRECT_URI],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=person.redirect,
        callback_handler=person.callback,
    )
    report: dict = {}
    http = create_mcp_http_client(auth=provider)
    async with http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            tools = await client.list_tools()
            report["tools"] = [t.name for t in tools.tools]
            result = await client.call_tool("generate_image", {"prompt": "a paper boat", "size": "1024x1024"})
            report["generated"] = not result.is_error
            report["generation_text"] = text_of(result)[:300]
            report["sign_ins_before_refresh"] = person.sign_ins
            report["client_id"] = storage.client.client_id if storage.client else None
            report["scope"] = storage.tokens.scope if storage.tokens else None
            before = storage.tokens.access_token if storage.tokens else None
            # The access token "expires": the SDK must refresh it, no person involved.
            provider.context.token_expiry_time = time.time() - 1
            again = await client.list_tools()
            report["after_refresh_tools"] = len(again.tools)
            report["refreshed"] = storage.tokens is not None and storage.tokens.access_token != before
            report["sign_ins_after_refresh"] = person.sign_ins
            if step_up_tool:
                stepped = await client.call_tool(step_up_tool, {"content_type": "image/png"})
                report["step_up_ok"] = not stepped.is_error
                report["step_up_text"] = text_of(stepped)[:300]
                report["sign_ins_after_step_up"] = person.sign_ins
                report["scope_after_step_up"] = storage.tokens.scope if storage.tokens else None
    report["pages"] = person.pages
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None))
