#!/usr/bin/env bash
# `make run`: the full stack on embedded defaults, in the foreground.
# Envoy (with the edge filter) on LISTEN_PORT, admin on ADMIN_PORT, the
# upstream on UPSTREAM_PORT (loopback only). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

LISTEN_PORT="${LISTEN_PORT:-8080}"
ADMIN_PORT="${ADMIN_PORT:-9901}"
UPSTREAM_PORT="${UPSTREAM_PORT:-8081}"
AUTHORIZE_PORT="${AUTHORIZE_PORT:-8082}"
METRICS_PORT="${METRICS_PORT:-9464}"
TLS_PORT="${TLS_PORT:-8443}"
export GATEWAY_METRICS_LISTEN="127.0.0.1:${METRICS_PORT}"
STATE_DIR="${STATE_DIR:-.state}"
ENVOY_CONCURRENCY="${ENVOY_CONCURRENCY:-2}"
BIN="${UPSTREAM_BIN:-target/debug/mcp-image-gateway}"
WASM="${WASM:-target/wasm32-wasip1/release/mcp_edge_filter.wasm}"
# The edge filter's settings: an admin edits this file and the running
# Envoy applies it (ECDS) within seconds. RESET_SETTINGS=1 starts over from
# the development defaults.
SETTINGS="${STATE_DIR}/edge-settings.json"
ECDS_DIR="${STATE_DIR}/ecds"
# EDGE=native: the edge filter as an Envoy dynamic module instead of Wasm.
EDGE="${EDGE:-wasm}"
MODULE="${MODULE:-target/release/libmcp_edge_native.so}"
export GATEWAY_PUBLIC_BASE_URL="${GATEWAY_PUBLIC_BASE_URL:-http://127.0.0.1:${LISTEN_PORT}}"
export GATEWAY_STATE_DIR="${STATE_DIR}"
# No load balancer to drain from locally: stop at once on Ctrl-C.
export GATEWAY_DRAIN_DELAY_SECS="${GATEWAY_DRAIN_DELAY_SECS:-0}"

for port in "${LISTEN_PORT}" "${ADMIN_PORT}" "${UPSTREAM_PORT}" "${METRICS_PORT}" "${AUTHORIZE_PORT}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
    echo "port ${port} is already in use; choose others, e.g. make run LISTEN_PORT=18080 ADMIN_PORT=19901 UPSTREAM_PORT=18081 METRICS_PORT=19464 AUTHORIZE_PORT=18082" >&2
    exit 1
  fi
done

ENVOY="$(scripts/ensure-envoy.sh)"
"${BIN}" dev-init --state-dir "${STATE_DIR}"
# The content policy (book: configuration/content-policy.md), re-read while
# running: a starting file with denied terms; moderation is off because the
# local stack has no moderation model (set "moderation" with OPENAI_API_KEY).
POLICY="${STATE_DIR}/content-policy.json"
if [[ ! -f "${POLICY}" ]]; then
  cat > "${POLICY}" <<'JSON'
{
  "default": {
    "deny_terms": {"weapons": ["bazooka", "rocket launcher", "grenade*"]},
    "moderation": "off",
    "when_moderation_unavailable": "refuse"
  },
  "orgs": {}
}
JSON
fi
export GATEWAY_CONTENT_POLICY_FILE="${GATEWAY_CONTENT_POLICY_FILE:-${POLICY}}"
if [[ -n "${RESET_SETTINGS:-}" && -f "${SETTINGS}" ]]; then
  mv "${SETTINGS}" "${SETTINGS}.$(date +%Y%m%dT%H%M%S).bak"
  echo "edge settings reset to the development defaults (the old file is kept beside it)"
fi
# ---- Identity provider trust (IDP_ISSUER) ---------------------------------
# make run IDP_ISSUER=URL [IDP_AUDIENCE=…] [IDP_ORG_CLAIM=…] [IDP_SCOPE_CLAIM=…]:
# the edge also trusts that IdP: its metadata (RFC 8414, else OpenID Connect
# discovery) gives its jwks_uri; the issuer joins the settings' jwt.issuers
# (audience: the MCP URL unless IDP_AUDIENCE) and leads authorization_servers.
# render-envoy below renders the cluster its keys are fetched through.
trust_idp() {
  [[ -n "${IDP_ISSUER:-}" ]] || return 0
  # With IDP_CLIENT_ID the gateway fronts the IdP (below): clients get the
  # gateway's tokens, and the IdP's own need no trust at the edge.
  [[ -z "${IDP_CLIENT_ID:-}" ]] || return 0
  "${BIN}" trust-issuer --settings "${SETTINGS}" --issuer "${IDP_ISSUER}" \
    ${IDP_AUDIENCE:+--audience "${IDP_AUDIENCE}"} \
    --org-claim "${IDP_ORG_CLAIM:-org}" --scope-claim "${IDP_SCOPE_CLAIM:-scope}"
}
trust_idp
# ---- end of identity provider trust ---------------------------------------
"${BIN}" render-envoy --template envoy/envoy.yaml.tmpl --out "${STATE_DIR}/envoy.yaml" \
  --set "ADMIN_PORT=${ADMIN_PORT}" --set "LISTEN_PORT=${LISTEN_PORT}" \
  --set "UPSTREAM_PORT=${UPSTREAM_PORT}" --set "WASM_PATH=$(realpath "${WASM}")" \
  --set "AUTHORIZE_PORT=${AUTHORIZE_PORT}" \
  --set "LISTEN_REUSE_PORT=false" \
  ${TLS:+--tls-port "${TLS_PORT}"} --ecds-dir "${ECDS_DIR}" --settings "${SETTINGS}" \
  $([[ "${EDGE}" == native ]] && echo --dynamic-module "${MODULE}")
"${ENVOY}" --mode validate -c "${STATE_DIR}/envoy.yaml" >/dev/null

pids=()
stop() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "${pid}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped."
}
trap stop EXIT INT TERM

# Both log to this terminal: JSON lines (audit events, access log) are the interface.
GATEWAY_LISTEN="127.0.0.1:${UPSTREAM_PORT}" "${BIN}" serve &
pids+=($!)
"${ENVOY}" -c "${STATE_DIR}/envoy.yaml" --use-dynamic-base-id --concurrency "${ENVOY_CONCURRENCY}" \
  --log-level warn --component-log-level wasm:info,dynamic_modules:info 2>&1 &
pids+=($!)
# Sign-in: the authorization server on the gateway's origin (/oauth/*).
# Without IDP_ISSUER it is the development sign-in (a form: user id and
# organisation); with IDP_ISSUER, IDP_CLIENT_ID and IDP_CLIENT_SECRET users
# sign in at that IdP through the gateway's client there.
if [[ -n "${IDP_ISSUER:-}" && -n "${IDP_CLIENT_ID:-}" ]]; then
  SIGN_IN="your IdP (${IDP_ISSUER}) through the gateway"
  authorize_env=()
else
  SIGN_IN="development sign-in (a form: user id and organisation)"
  # (IDP_ISSUER alone means the edge trusts that IdP directly, above.)
  authorize_env=(-u IDP_ISSUER GATEWAY_AUTHZ_DEV_SIGN_IN=true)
fi
env "${authorize_env[@]}" GATEWAY_AUTHZ_LISTEN="127.0.0.1:${AUTHORIZE_PORT}" "${BIN}" authorize &
pids+=($!)
# Hands each edit of the settings file to Envoy and audits it.
"${BIN}" watch-edge-settings --settings "${SETTINGS}" --ecds-dir "${ECDS_DIR}" \
  --envoy-admin "http://127.0.0.1:${ADMIN_PORT}" &
pids+=($!)

for _ in $(seq 1 150); do
  if curl -fsS "http://127.0.0.1:${UPSTREAM_PORT}/healthz" >/dev/null 2>&1 \
     && curl -fsS "http://127.0.0.1:${AUTHORIZE_PORT}/healthz" >/dev/null 2>&1 \
     && curl -fsS "http://127.0.0.1:${ADMIN_PORT}/ready" >/dev/null 2>&1; then
    ready=1; break
  fi
  sleep 0.2
done
if [[ -z "${ready:-}" ]]; then echo "the stack did not become ready; see the log lines above" >&2; exit 1; fi

TOKEN="$("${BIN}" token --sub "${SUB:-alice}" --org "${ORG:-acme}" --state-dir "${STATE_DIR}")"
MCP_URL="${GATEWAY_PUBLIC_BASE_URL}/mcp"
if [[ -n "${OPENAI_API_KEY:-}" ]]; then BACKEND="openai (${OPENAI_IMAGE_MODEL:-gpt-image-2})"; else BACKEND="offline-preview (set OPENAI_API_KEY for real images)"; fi
cat <<BANNER

  MCP image gateway is up.
    MCP endpoint : ${MCP_URL}
    backend      : ${BACKEND}
    Envoy admin  : http://127.0.0.1:${ADMIN_PORT}   (stats: /stats/prometheus)
    metrics      : http://127.0.0.1:${METRICS_PORT}/metrics (upstream, not routed by Envoy)${TLS:+
    TLS 1.3      : https://localhost:${TLS_PORT}/mcp (self-signed: ${STATE_DIR}/tls.crt)}
    sign-in      : ${SIGN_IN}
    state        : ${STATE_DIR}/ (dev keys, images)
    edge settings: ${SETTINGS}  (edit it: the running Envoy applies it in seconds;
                   check a copy offline with '${BIN} check-settings FILE')

  Development bearer token (sub=${SUB:-alice}, org=${ORG:-acme}, valid 24 h; more with 'make token SUB=bob ORG=acme'):
    ${TOKEN}

  Try it:
    curl -s ${MCP_URL} \\
      -H 'Authorization: Bearer ${TOKEN}' \\
      -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\
      -H 'MCP-Protocol-Version: 2025-06-18' \\
      -d '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"generate_image","arguments":{"prompt":"a lighthouse at dusk","size":"1536x1024"}}}'

  Connect an MCP client with no token: it follows the 401 and signs you in
  (a browser page; then consent):
    Claude Code : claude mcp add --transport http images ${MCP_URL}
                  (then /mcp in Claude Code, choose images, Authenticate)
    VS Code     : .vscode/mcp.json  {"servers": {"images": {"type": "http", "url": "${MCP_URL}"}}}
  Or with the token above (scripts, SDKs):
    {"mcpServers": {"images": {"type": "http", "url": "${MCP_URL}",
      "headers": {"Authorization": "Bearer ${TOKEN}"}}}}

  Ctrl-C stops everything.
BANNER

wait -n "${pids[@]}"
echo "a process exited; stopping the stack" >&2
