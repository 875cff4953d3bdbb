#!/usr/bin/env bash
# Installs the official MCP SDK clients the integration tests drive:
# the Python SDK into the project venv, the TypeScript SDK under tests/clients.
set -euo pipefail
cd "$(dirname "$0")/.."
MCP_PYTHON_VERSION="2.3.0"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
if ! .venv/bin/python -c "import importlib.metadata as m; assert m.version('mcp') == '${MCP_PYTHON_VERSION}'" 2>/dev/null; then
  echo "installing the MCP Python SDK ${MCP_PYTHON_VERSION} into .venv ..." >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "mcp==${MCP_PYTHON_VERSION}" >&2
fi
if [[ ! -d tests/clients/node_modules/@modelcontextprotocol/sdk ]]; then
  echo "installing the MCP TypeScript SDK under tests/clients ..." >&2
  (cd tests/clients && npm ci --silent --no-audit --no-fund) >&2
fi
# A real S3-compatible server (checks SigV4 and presigned-URL expiry) for the storage tests.
if ! command -v s3s-fs >/dev/null 2>&1 && [[ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]]; then
  echo "installing s3s-fs 0.14.1 (S3-compatible test server) ..." >&2
  cargo install s3s-fs@0.14.1 --features binary --locked >&2
fi
