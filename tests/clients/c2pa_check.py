"""Validates images' C2PA Content Credentials with PyPI c2pa-python, an
independent validator (never the crate that signed them).

    c2pa_check.py ANCHOR_PEM|- FILE...

Prints one JSON object per file: {"file", "state", "store"} where state is
"Invalid", "Valid" or "Trusted" (with ANCHOR_PEM as the only trust anchor;
"-" checks without trust) and store is the reader's JSON manifest store, or
{"file", "error"} when no manifest could be read.
"""

import json
import sys

import c2pa


def context(anchor_path):
    if anchor_path == "-":
        settings = {"verify": {"verify_trust": False}}
    else:
        with open(anchor_path, encoding="utf-8") as anchor:
            settings = {"verify": {"verify_trust": True}, "trust": {"trust_anchors": anchor.read()}}
    return c2pa.Context(c2pa.Settings.from_dict(settings))


def mime(data):
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def main():
    anchor_path, files = sys.argv[1], sys.argv[2:]
    for path in files:
        with open(path, "rb") as stream:
            kind = mime(stream.read(16))
            stream.seek(0)
            try:
                reader = c2pa.Reader(kind, stream, context=context(anchor_path))
                report = {"file": path, "state": reader.get_validation_state(), "store": json.loads(reader.json())}
            except Exception as error:  # the validator's refusal is the finding
                report = {"file": path, "error": f"{type(error).__name__}: {error}"}
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
