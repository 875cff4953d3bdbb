#!/usr/bin/env bash
# Prints the path of mdBook, installing the pinned version with cargo if it is
# missing or another version: built without the `serve` and `watch` features
# (a web server and a file watcher `make docs` never uses), about two minutes
# of compiling once.
set -euo pipefail
MDBOOK_VERSION="0.5.4"
ROOT="${CARGO_HOME:-$HOME/.cargo}"
BIN="${ROOT}/bin/mdbook"
if [[ "$("${BIN}" --version 2>/dev/null)" != "mdbook v${MDBOOK_VERSION}" ]]; then
  echo "installing mdbook ${MDBOOK_VERSION} ..." >&2
  cargo install mdbook --version "${MDBOOK_VERSION}" --locked --no-default-features --features search --root "${ROOT}" >&2
fi
echo "${BIN}"
