# MCP image gateway: thin targets over cargo and scripts/.
SHELL := /bin/bash
.DEFAULT_GOAL := help

LISTEN_PORT ?= 8080
ADMIN_PORT ?= 9901
UPSTREAM_PORT ?= 8081
AUTHORIZE_PORT ?= 8082
METRICS_PORT ?= 9464
TLS_PORT ?= 8443
STATE_DIR ?= .state
SUB ?= alice
ORG ?= acme
export LISTEN_PORT ADMIN_PORT UPSTREAM_PORT METRICS_PORT TLS_PORT TLS STATE_DIR SUB ORG RESET_SETTINGS AUTHORIZE_PORT
# Sign-in through a company IdP instead of the development sign-in (book: operations/sign-in.md).
export IDP_ISSUER IDP_CLIENT_ID IDP_CLIENT_SECRET IDP_AUDIENCE IDP_ORG_CLAIM IDP_SCOPE_CLAIM

WASM := target/wasm32-wasip1/release/mcp_edge_filter.wasm
# The filter is on Envoy's hot path: whole-program optimisation for it alone, and
# abort on panic (wasm32 cannot unwind; the service's release builds keep the
# workspace profile, which unwinds).
WASM_CARGO := CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_PANIC=abort cargo
BIN := target/debug/mcp-image-gateway

.PHONY: docs docs-reference cost-sim help run test build wasm upstream ratelimit check-settings envoy test-clients token lint fmt clean bench-edge native-module bench-stack bench-policy soak fuzz fuzz-manifest deploy-render wasm-oci app app-check evidence

help:
	@echo "make run     start Envoy + filter + upstream on 127.0.0.1:$(LISTEN_PORT) (Ctrl-C stops; TLS=1 adds TLS 1.3 on $(TLS_PORT); EDGE=native runs the filter as a dynamic module)"
	@echo "             sign-in: MCP clients follow the 401 to the development sign-in; IDP_ISSUER=URL IDP_CLIENT_ID=ID IDP_CLIENT_SECRET=S signs in at your IdP"
	@echo "             edge settings live in $(STATE_DIR)/edge-settings.json: edits apply at once (RESET_SETTINGS=1 starts over)"
	@echo "make check-settings FILE=...  validate edge settings offline with the filter's own code"
	@echo "make test    all tests: filter and upstream unit tests, integration tests through Envoy"
	@echo "make token   print a dev token (SUB=alice ORG=acme)"
	@echo "make lint    rustfmt and clippy (-D warnings)"
	@echo "make docs    the book (docs/) into target/book: fails on a warning or a broken internal link"
	@echo "make docs-reference  regenerate the book's settings reference from the code (docs/src/reference)"
	@echo "make evidence OUT=DIR  the compliance evidence bundle: SBOMs, licence checks, settings, audit verification, erasures (book: docs/src/operations/evidence.md)"
	@echo "make app     rebuild the image studio MCP App (app/) into upstream/assets/image-studio.html (needs Node; commit the result)"
	@echo "make bench-edge  bare Envoy, Envoy's native MCP stack, a no-op Wasm filter, ours as Wasm and as a dynamic module (bench/results/edge.md)"
	@echo "make native-module  the filter as an Envoy dynamic module (target/release/libmcp_edge_native.so)"
	@echo "make bench-policy  denied-terms matching, 10,000 terms against a 4,000-character prompt, automaton against a loop (bench/results/policy.md)"
	@echo "make bench-stack  the whole stack under load: instant model, and a 500/s burst with 10 s model latency (bench/results/stack.md)"
	@echo "make cost-sim  weighted cost per image of the example routing configurations"
	@echo "make soak    steady mixed traffic for SOAK_SECONDS (600) while faults are injected (bench/results/soak.md)"
	@echo "make fuzz    fuzz the filter's request decisions, then the upstream's reading of foreign C2PA manifests (FUZZ_SECONDS=60 each)"
	@echo "make fuzz-manifest  only the reading of foreign C2PA manifests (upstream/fuzz)"

wasm:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	$(WASM_CARGO) build --release --target wasm32-wasip1 -p mcp-edge-filter

upstream:
	cargo build -p mcp-image-gateway

# The shared rate-limit service: tests start it; `make run` does not.
ratelimit:
	cargo build -p mcp-ratelimit

build: wasm upstream

check-settings: upstream
	$(BIN) check-settings $(FILE)

envoy:
	@scripts/ensure-envoy.sh >/dev/null

test-clients:
	@scripts/ensure-test-clients.sh

# The image studio is committed built, so `make run` and cargo need no Node.
app: test-clients
	cd app && node build.mjs

# Fails when the committed page is not what app/src builds to; runs the app's unit tests.
app-check: test-clients
	cd app && node build.mjs --check && node --test src/

run: build envoy
	$(if $(filter native,$(EDGE)),$(MAKE) native-module)
	scripts/run.sh

test: build ratelimit envoy test-clients app-check
	$(MAKE) native-module NATIVE_PROFILE=debug
	set -o pipefail; ENVOY_BIN="$$(scripts/ensure-envoy.sh)" cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt

token: upstream
	@$(BIN) dev-init --state-dir $(STATE_DIR)
	@$(BIN) token --sub $(SUB) --org $(ORG) --state-dir $(STATE_DIR) \
	  --public-base-url "$${GATEWAY_PUBLIC_BASE_URL:-http://127.0.0.1:$(LISTEN_PORT)}"

# The filter's decisions as an Envoy dynamic module (native), for bench-edge's
# second row (release) and its test through Envoy (`make test` builds debug).
NATIVE_PROFILE ?= release
native-module:
	CARGO_PROFILE_RELEASE_PANIC=unwind cargo build $(if $(filter release,$(NATIVE_PROFILE)),--release) -p mcp-edge-filter --features dynamic-module
	cp target/$(NATIVE_PROFILE)/libmcp_edge_filter.so target/$(NATIVE_PROFILE)/libmcp_edge_native.so

bench-edge: build envoy native-module
	@command -v wrk >/dev/null || (echo "bench-edge needs wrk: apt-get install wrk" >&2; exit 1)
	@command -v oha >/dev/null || cargo install oha --locked
	CARGO_TARGET_DIR=$(CURDIR)/target cargo build --release --target wasm32-wasip1 --manifest-path bench/edge/noop-filter/Cargo.toml
	cargo build --release -p gateway-tests --bin otlp-receiver
	python3 bench/edge/run.py

# The content policy's denied-terms check: 10,000 terms, a 4,000-character prompt (bench/results/policy.md).
bench-policy:
	CARGO_TARGET_DIR=$(CURDIR)/target cargo run --release --manifest-path bench/policy/Cargo.toml > bench/results/policy.md
	cat bench/results/policy.md

bench-stack: wasm envoy
	@command -v oha >/dev/null || cargo install oha --locked
	cargo build --release -p mcp-image-gateway -p gateway-tests --bin mcp-image-gateway --bin fake-openai --bin otlp-receiver
	python3 bench/stack/run.py

# The weighted cost per image of the example routing configurations (deploy/examples/cost).
COST := deploy/examples/cost
cost-sim: upstream
	$(BIN) cost-sim --mix $(COST)/mix.json --models $(COST)/models.json --default-chain openai:gpt-image-1-mini \
	  --routes "hosted only=$(COST)/routes-hosted.json" --routes "on-prem first=$(COST)/routes.json"

# Not part of `make test`: ten minutes of traffic and faults (SOAK_SECONDS).
soak: build envoy
	@command -v redis-server >/dev/null || (echo "make soak needs redis-server: apt-get install redis-server" >&2; exit 1)
	cargo build -p gateway-tests --bin fake-openai
	python3 bench/soak/run.py

FUZZ_SECONDS ?= 60
# cargo-fuzz needs nightly-only flags; RUSTC_BOOTSTRAP lets the stable toolchain take them.
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd filter && RUSTC_BOOTSTRAP=1 cargo fuzz run request -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096
	$(MAKE) fuzz-manifest

# Arbitrary bytes as an uploaded, referenced or provider image (PNG, JPEG,
# WebP) through the reading of its C2PA manifest, and as a PNG whose
# manifest's place is found for signing. The seeds (signed and
# unsigned images of each format) are made once by a unit test. A run over
# 10 s or 2 GiB fails: reading must stay bounded in time and memory.
MANIFEST_CORPUS := upstream/fuzz/corpus/manifest
fuzz-manifest:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	@test -n "$$(ls -A $(MANIFEST_CORPUS) 2>/dev/null)" || FUZZ_SEEDS=$(CURDIR)/$(MANIFEST_CORPUS) cargo test -p mcp-image-gateway --lib provenance::verify::tests::fuzz_seeds -- --ignored --exact
	cd upstream && RUSTC_BOOTSTRAP=1 cargo fuzz run manifest -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 -rss_limit_mb=2048

# Envoy config for the Kubernetes gateway (deploy/gateway/envoy.yaml), from the
# same template as `make run`, with deploy/gateway/filter-config.json.
# Traces go to the cluster's OpenTelemetry collector (OTLP/gRPC); drop the two
# variables to render without tracing.
DEPLOY_OTEL := OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector.observability.svc.cluster.local:4317 OTEL_SERVICE_NAME=mcp-image-gateway
deploy-render: upstream
	$(DEPLOY_OTEL) $(BIN) render-envoy --template envoy/envoy.yaml.tmpl --out deploy/gateway/envoy.yaml \
	  --set LISTEN_ADDRESS=0.0.0.0 --set LISTEN_PORT=8080 --set ADMIN_ADDRESS=0.0.0.0 --set ADMIN_PORT=9901 \
	  --set UPSTREAM_ADDRESS=mcp-upstream.mcp-images.svc.cluster.local --set UPSTREAM_CLUSTER_TYPE=STRICT_DNS \
	  --set AUTHORIZE_ADDRESS=mcp-authorize.mcp-images.svc.cluster.local --set AUTHORIZE_CLUSTER_TYPE=STRICT_DNS --set AUTHORIZE_PORT=8082 --set XFF_TRUSTED_HOPS=1 \
	  --set UPSTREAM_PORT=8081 --set WASM_PATH=/etc/envoy-wasm/mcp_edge_filter.wasm \
  --set 'CORS_ORIGIN_REGEX=^https://app\.example\.com$$' \
	  --set-file FILTER_CONFIG=deploy/gateway/filter-config.json --set-file EXTRA_CLUSTERS=deploy/gateway/clusters.yaml

# The compliance evidence bundle (scripts/evidence.sh; OUT, SINCE, EDGE_SETTINGS).
evidence: upstream
	OUT="$(or $(OUT),target/evidence)" scripts/evidence.sh

# The filter as an OCI image layout Istio's WasmPlugin can pull (target/oci/mcp-edge-filter).
wasm-oci: wasm
	python3 scripts/build-wasm-oci.py

# The book: mdBook (pinned, installed on first use) into target/book; a warning
# or a broken internal link or anchor fails it.
docs:
	@mkdir -p target
	set -o pipefail; "$$(scripts/ensure-mdbook.sh)" build docs 2>&1 | tee target/mdbook.log
	@! grep -E '\b(WARN|ERROR)\b' target/mdbook.log || (echo "make docs: mdBook warned (above)" >&2; exit 1)
	python3 scripts/check-book-links.py target/book

# The settings reference pages, from the types that parse the settings; a unit
# test (cli::reference) fails when the committed pages differ.
docs-reference: upstream
	$(BIN) docs-reference --out docs/src/reference

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --release --target wasm32-wasip1 -p mcp-edge-filter -- -D warnings
	cargo clippy -p mcp-edge-filter --features dynamic-module --all-targets -- -D warnings

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf $(STATE_DIR)
