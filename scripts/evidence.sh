#!/usr/bin/env bash
# `make evidence OUT=DIR`: SBOMs of both binaries (CycloneDX via
# cargo-cyclonedx), licence/ban/source checks (cargo-deny, deny.toml; no
# advisories: they need a network database), then `mcp-image-gateway
# evidence`, which adds settings, audit verification, retention and
# erasures, access controls, TLS, test and benchmark summaries, and writes
# manifest.json. Settings come from the environment (GATEWAY_*), as for serve.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-target/evidence}"
command -v cargo-cyclonedx >/dev/null || cargo install cargo-cyclonedx@0.5.9 --locked
command -v cargo-deny >/dev/null || cargo install cargo-deny@0.20.2 --locked --no-default-features
stage="$(mktemp -d)"
trap 'rm -rf "$stage"; rm -f ./*/*.cdx.json' EXIT
sbom() { # manifest, output name, extra cargo-cyclonedx flags
  rm -f ./*/*.cdx.json
  cargo cyclonedx --manifest-path "$1" --format json --spec-version 1.5 --describe binaries --no-build-deps -q "${@:3}"
  mv "$(dirname "$1")"/*.cdx.json "$stage/$2"
}
sbom upstream/Cargo.toml mcp-image-gateway.cdx.json
sbom filter/Cargo.toml mcp-edge-filter.wasm.cdx.json --target wasm32-wasip1
sbom filter/Cargo.toml mcp-edge-filter.native.cdx.json --features dynamic-module
# Both checks' results go into the bundle; a failure fails the target too.
set +e
cargo deny --color never check licenses bans sources >"$stage/cargo-deny.txt" 2>&1
deny_status=$?
cargo deny --color never list --format json >"$stage/licenses.json" 2>/dev/null
set -e
target/debug/mcp-image-gateway evidence --out "$OUT" \
  --edge-settings "${EDGE_SETTINGS:-${STATE_DIR:-.state}/edge-settings.json}" \
  --include "$stage/mcp-image-gateway.cdx.json" --include "$stage/mcp-edge-filter.wasm.cdx.json" \
  --include "$stage/mcp-edge-filter.native.cdx.json" --include "$stage/cargo-deny.txt" --include "$stage/licenses.json" \
  ${SINCE:+--since "$SINCE"}
[[ $deny_status -eq 0 ]] || { echo "cargo deny found a problem: $OUT/sbom/cargo-deny.txt" >&2; exit 1; }
echo "evidence written to $OUT (manifest.json lists every file with its SHA-256)"
