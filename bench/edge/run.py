#!/usr/bin/env python3
"""make bench-edge: one edge three ways, against the same fast upstream stand-in.

  bare    Envoy with no auth or limit filter
  native  Envoy's jwt_authn (JWT cache on) + local_ratelimit
  ours    the mcp_edge Wasm filter (JWT with a warm token cache, JSON-RPC and
          MCP checks, per-caller and per-org buckets in shared data)

Each variant runs in several interleaved rounds (the machine is shared and
noisy); medians of requests/s and of wrk's p50/p99 are reported, with ratios
against bare Envoy measured in the same run. Writes bench/results/edge.md.
"""

import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import json
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STATE = ROOT / ".state" / "bench-edge"
BIN = ROOT / "target" / "debug" / "mcp-image-gateway"
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "mcp_edge_filter.wasm"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
DURATION = os.environ.get("BENCH_DURATION", "8s")
CONNECTIONS = os.environ.get("BENCH_CONNECTIONS", "32")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(template: str, values: dict) -> str:
    def sub(match):
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template needs a value for ${{{name}}}")
        return str(values[name])
    return re.sub(r"\$\{([A-Z_]+)\}", sub, template)


def wait_ready(admin_port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"Envoy (admin {admin_port}) not ready")


def start_envoy(envoy: str, config: str, name: str) -> subprocess.Popen:
    path = STATE / f"{name}.yaml"
    path.write_text(config)
    log = open(STATE / f"{name}.log", "w")
    return subprocess.Popen(
        [envoy, "-c", str(path), "--use-dynamic-base-id", "--concurrency", "1", "--log-level", "error"],
        stdout=log, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def to_ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(port: int, token: str) -> dict:
    env = dict(os.environ, BENCH_TOKEN=token)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION}", "--latency", "-s", str(HERE / "post.lua"),
         f"http://127.0.0.1:{port}/mcp"],
        env=env, capture_output=True, text=True, check=True).stdout
    if "Non-2xx or 3xx responses" in out:
        raise RuntimeError(f"non-2xx responses during the run:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    return {"rps": rps, "p50": p50, "p99": p99}


def main() -> int:
    envoy = subprocess.run([str(ROOT / "scripts" / "ensure-envoy.sh")], capture_output=True, text=True,
                           check=True).stdout.strip()
    STATE.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BIN), "dev-init", "--state-dir", str(STATE)], check=True)
    standin_port, standin_admin = free_port(), free_port()
    listen_port, admin_port = free_port(), free_port()
    base_url = f"http://127.0.0.1:{listen_port}"
    token = subprocess.run([str(BIN), "token", "--state-dir", str(STATE), "--public-base-url", base_url],
                           capture_output=True, text=True, check=True).stdout.strip()
    filter_config = json.loads(subprocess.run(
        [str(BIN), "filter-config", "--state-dir", str(STATE), "--public-base-url", base_url],
        capture_output=True, text=True, check=True).stdout)
    # Limits on, but high enough that the run measures their cost, not their refusals.
    filter_config["rate_limits"] = {
        "per_caller": {"requests_per_second": 1e9, "burst": 1_000_000_000},
        "per_org": {"requests_per_second": 1e9, "burst": 1_000_000_000},
    }
    common = {"ADMIN_PORT": admin_port, "LISTEN_PORT": listen_port, "STANDIN_PORT": standin_port}
    variant_template = (HERE / "edge-variant.yaml.tmpl").read_text()
    variants = {
        "bare": render(variant_template, {**common, "HTTP_FILTERS": ""}),
        "native": render(variant_template, {**common, "HTTP_FILTERS": render(
            (HERE / "native-filters.yaml.tmpl").read_text(),
            {"ISSUER": filter_config["jwt"]["issuer"], "AUDIENCE": f"{base_url}/mcp",
             "JWKS": json.dumps(filter_config["jwt"]["jwks"])})}),
        "ours": render(variant_template, {**common, "HTTP_FILTERS": render(
            (HERE / "ours-filter.yaml.tmpl").read_text(),
            {"WASM_PATH": WASM, "FILTER_CONFIG": json.dumps(filter_config)})}),
    }
    standin = start_envoy(envoy, render((HERE / "upstream-standin.yaml.tmpl").read_text(),
                                        {"STANDIN_PORT": standin_port, "STANDIN_ADMIN_PORT": standin_admin}),
                          "standin")
    results = {name: [] for name in variants}
    try:
        wait_ready(standin_admin)
        order = list(variants)
        for round_index in range(ROUNDS):
            for name in order:
                process = start_envoy(envoy, variants[name], name)
                try:
                    wait_ready(admin_port)
                    run_wrk(listen_port, token) if round_index == 0 else None  # warm-up (V8 JIT, caches)
                    result = run_wrk(listen_port, token)
                    results[name].append(result)
                    print(f"round {round_index + 1} {name:6} {result['rps']:9.0f} req/s  "
                          f"p50 {result['p50']:.3f} ms  p99 {result['p99']:.3f} ms", flush=True)
                finally:
                    stop(process)
            order = order[1:] + order[:1]
    finally:
        stop(standin)

    med = {name: {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")}
           for name, runs in results.items()}
    bare, native, ours = med["bare"], med["native"], med["ours"]
    lines = [
        f"Medians of {ROUNDS} interleaved rounds; wrk, 1 thread, {CONNECTIONS} connections, {DURATION} "
        f"per run; Envoy 1.40 with 1 worker; the same direct-response upstream stand-in; "
        f"POST tools/list with a bearer JWT.",
        "",
        "| edge | requests/s | p50 ms | p99 ms | throughput vs bare | p99 − bare (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("bare", "bare Envoy"), ("native", "jwt_authn + local_ratelimit"),
                        ("ours", "mcp_edge Wasm filter")):
        m = med[name]
        lines.append(f"| {label} | {m['rps']:.0f} | {m['p50']:.3f} | {m['p99']:.3f} | "
                     f"{m['rps'] / bare['rps']:.2f} | {m['p99'] - bare['p99']:+.3f} |")
    lines += [
        "",
        f"Ours vs native: throughput ratio {ours['rps'] / native['rps']:.2f}, "
        f"p99 difference {ours['p99'] - native['p99']:+.3f} ms. Targets: ratio ≥ 1.00, and p99 within "
        f"0.3 ms of bare Envoy (measured: {ours['p99'] - bare['p99']:+.3f} ms).",
    ]
    table = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results" / "edge.md"
    out.write_text("# make bench-edge\n\n" + table)
    print("\n" + table)
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
