#!/usr/bin/env python3
"""Packages the built filter as an OCI image layout Istio's WasmPlugin can pull
(the "compat" variant: one tar+gzip layer holding plugin.wasm).

Usage: build-wasm-oci.py [WASM] [OUT_DIR] [TAG]
Push it with any OCI tool, e.g. `oras cp --from-oci-layout OUT_DIR:TAG registry/...`
or `skopeo copy oci:OUT_DIR:TAG docker://registry/...`.
"""

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
wasm_path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target/wasm32-wasip1/release/mcp_edge_filter.wasm"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "target/oci/mcp-edge-filter"
tag = sys.argv[3] if len(sys.argv) > 3 else "0.1.0"

wasm = wasm_path.read_bytes()
blobs = out / "blobs" / "sha256"
blobs.mkdir(parents=True, exist_ok=True)


def blob(data: bytes, media_type: str) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


# A reproducible layer: fixed mtime, owner and mode.
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
    info = tarfile.TarInfo("plugin.wasm")
    info.size, info.mtime, info.mode = len(wasm), 0, 0o444
    tar.addfile(info, io.BytesIO(wasm))
tar_bytes = raw.getvalue()
layer_bytes = gzip.compress(tar_bytes, mtime=0)
layer = blob(layer_bytes, "application/vnd.oci.image.layer.v1.tar+gzip")
config = blob(json.dumps({
    "architecture": "wasm", "os": "wasip1",
    "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar_bytes).hexdigest()}"]},
    "config": {},
}, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
manifest = blob(json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": config,
    "layers": [layer],
    "annotations": {"org.opencontainers.image.title": "mcp-edge-filter"},
}, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json")
manifest["annotations"] = {"org.opencontainers.image.ref.name": tag}
(out / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
(out / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}, indent=2))
print(f"{out} ({tag}): manifest {manifest['digest']}, plugin.wasm {len(wasm)} bytes")
