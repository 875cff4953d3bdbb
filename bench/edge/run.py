#!/usr/bin/env python3
"""make bench-edge: one edge several ways, against the same fast upstream stand-in.

  bare        Envoy with no auth or limit filter
  native      Envoy's jwt_authn (JWT cache on) + local_ratelimit
  native_mcp  Envoy's own MCP stack: envoy.filters.http.mcp (REJECT_NO_MCP:
              buffers and parses every body) + jwt_authn + local_ratelimit
              with a per-user descriptor from the JWT: the reference
  floor       a proxy-wasm filter that does nothing (bench/edge/noop-filter): what
              any Wasm filter costs in Envoy's V8 before doing any work
  ours        the mcp_edge Wasm filter (JWT with a warm token cache, JSON-RPC and
              MCP checks, per-caller and per-org buckets in shared data, the
              signed identity assertion)
  ours_native the same decision core built as an Envoy dynamic module (native
              code, envoy.filters.http.dynamic_modules; the same settings)
  ours_traced, ours_native_traced
              the two with tracing on at 100 % sampling: Envoy's OpenTelemetry
              tracer exporting every request's span, tagged with the filter's
              decision (`"tracing": {}`), to a local OTLP/gRPC receiver
              (tests/src/bin/otlp-receiver.rs, counting spans)
  with BENCH_BREAKDOWN=1, the per-phase cost of ours at the first worker
  count: a build with the `phase-switches` feature (filter/src/phases.rs)
  runs whole and with each phase switched off (`bench_skip`), plus
  configuration-level variants (no rate limits, no identity assertion), in
  two groups beside the no-op floor; a phase's cost is the median over
  rounds of the whole build's Envoy CPU per request less the variant's in the
  same round. "after_header_read" off leaves only reading the headers, so
  that variant less the floor is what reading them costs.

BENCH_WORKERS (default 1,2) sweeps Envoy's worker count; on a machine with
more cores pass more (1,2,4,8).

All variants of one worker count run at once, each Envoy on its own port,
idle but for the one under load: the load moves between them in short
slices (BENCH_DURATION, default 2 s), BENCH_ROUNDS times in a shuffled
order, so the slow drift of a shared machine falls on every variant alike
(restarting Envoy per measurement left ±10 % between rounds). Saturated
slices use wrk (requests/s, Envoy's CPU per request); latency runs at a
fixed rate with oha (p50/p99 below saturation). Medians are reported, with
ratios against the native MCP stack measured in the same run.
Writes bench/results/edge.md.
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
import random
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import SpanSink, collector_cluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STATE = ROOT / ".state" / "bench-edge"
BIN = ROOT / "target" / "debug" / "mcp-image-gateway"
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "mcp_edge_filter.wasm"
NOOP_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "noop_filter.wasm"
PHASES_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "mcp_edge_filter_phases.wasm"
# `make native-module`: the same decisions as an Envoy dynamic module (filter/src/envoy_native).
NATIVE_MODULE = ROOT / "target" / "release" / "libmcp_edge_native.so"
RECEIVER = ROOT / "target" / "release" / "otlp-receiver"
# (variant, what switching it off removes, filter settings patch)
PHASES = [
    ("after_header_read", "everything after reading the request headers", {"bench_skip": ["after_header_read"]}),
    ("credentials", "credential check and token-cache lookup", {"bench_skip": ["credentials"]}),
    ("body", "body hold, JSON-RPC parse and the checks on it", {"bench_skip": ["body"]}),
    ("mcp_rules", "MCP header rules (POST headers, routing headers vs body)", {"bench_skip": ["mcp_rules"]}),
    ("buckets", "the two buckets (per caller, per org)", {"rate_limits": {}}),
    ("metrics", "metric host calls", {"bench_skip": ["metrics"]}),
    ("response", "response-phase callbacks (output cap)", {"bench_skip": ["response"]}),
    ("assertion", "identity assertion (signing and header write)", {"identity_assertion": None}),
    ("identity_header_writes", "credential removal and assertion header write", {"bench_skip": ["identity_header_writes"]}),
]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "9"))
DURATION = os.environ.get("BENCH_DURATION", "2s")
FIXED_ROUNDS = int(os.environ.get("BENCH_FIXED_ROUNDS", "3"))
CONNECTIONS = os.environ.get("BENCH_CONNECTIONS", "32")
RATE = int(os.environ.get("BENCH_RATE", "1000"))
WORKERS = [int(w) for w in os.environ.get("BENCH_WORKERS", "1,2").split(",") if w]
BREAKDOWN = os.environ.get("BENCH_BREAKDOWN") == "1"
# BENCH_PIN=1: Envoy and the load generator on separate cores (taskset).
PIN = os.environ.get("BENCH_PIN", "0") == "1"
FIXED_SECONDS = int(os.environ.get("BENCH_FIXED_SECONDS", "5"))


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


def cpu_split(workers: int):
    """(Envoy's cores, the load generator's) when there are cores to spare for
    the load: pinned apart, the two stop trading places on the same core,
    which is most of the run-to-run noise at one worker on a small machine."""
    cores = os.cpu_count() or 1
    if not PIN or workers >= cores:
        return None
    return f"{cores - workers}-{cores - 1}", f"0-{cores - workers - 1}"


def pinned(command: list, cores) -> list:
    return ["taskset", "-c", cores, *command] if cores else command


def start_envoy(envoy: str, config: str, name: str, workers: int = 1) -> subprocess.Popen:
    path = STATE / f"{name}.yaml"
    path.write_text(config)
    log = open(STATE / f"{name}.log", "w")
    split = cpu_split(workers)
    return subprocess.Popen(
        pinned([envoy, "-c", str(path), "--use-dynamic-base-id", "--concurrency", str(workers), "--log-level", "error"], split and split[0]),
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(port: int, token: str, pid: int, workers: int = 1) -> dict:
    env = dict(os.environ, BENCH_TOKEN=token)
    cpu_before = cpu_seconds(pid)
    # One load thread per two Envoy workers (on 2 cores the load generator competes anyway).
    threads = max(1, min(workers // 2, (os.cpu_count() or 2) // 2))
    split = cpu_split(workers)
    out = subprocess.run(pinned(
        ["wrk", f"-t{threads}", f"-c{CONNECTIONS}", f"-d{DURATION}", "--latency", "-s", str(HERE / "post.lua"),
         f"http://127.0.0.1:{port}/mcp"], split and split[1]),
        env=env, capture_output=True, text=True, check=True).stdout
    if "Non-2xx or 3xx responses" in out:
        raise RuntimeError(f"non-2xx responses during the run:\n{out}")
    cpu = cpu_seconds(pid) - cpu_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    # Envoy's own CPU per request: the edge's cost, less sensitive than
    # throughput to what else the shared machine runs.
    return {"rps": rps, "p50": p50, "p99": p99, "cpu_us": cpu / requests * 1e6, "requests": requests}


def run_oha(port: int, token: str, workers: int) -> dict:
    """Latency at a fixed arrival rate, corrected for coordinated omission."""
    split = cpu_split(workers)
    out = subprocess.run(pinned(
        ["oha", "--no-tui", "--output-format", "json", "-z", f"{FIXED_SECONDS}s", "-q", str(RATE),
         "--latency-correction", "-c", "16", "-m", "POST",
         "-H", "Content-Type: application/json", "-H", "Accept: application/json, text/event-stream",
         "-H", "MCP-Protocol-Version: 2025-06-18", "-H", f"Authorization: Bearer {token}",
         "-d", '{"jsonrpc":"2.0","id":1,"method":"tools/list"}', f"http://127.0.0.1:{port}/mcp"], split and split[1]),
        capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    codes = report.get("statusCodeDistribution", {})
    if set(codes) - {"200"}:
        raise RuntimeError(f"non-200 answers at a fixed rate: {codes}")
    percentiles = report["latencyPercentiles"]
    return {"p50": percentiles["p50"] * 1000, "p99": percentiles["p99"] * 1000}


def paired(runs: dict, minuend: str, subtrahend: str) -> float:
    """Median over rounds of one variant's CPU per request less another's, in
    the same round (the slow drift of the machine cancels out)."""
    return statistics.median(a["cpu_us"] - b["cpu_us"] for a, b in zip(runs[minuend], runs[subtrahend]))


def breakdown_lines(groups: list, workers: int) -> list:
    """Per-phase cost: the switchable build whole, less each variant."""
    first = groups[0]
    whole = statistics.median(r["cpu_us"] for r in first["phases-whole"])
    lines = ["", f"### Where the filter's time goes ({workers} worker, Envoy CPU µs per request)", "",
             f"The `phase-switches` build (filter/src/phases.rs) runs whole and with one phase switched off at a "
             f"time, in {len(groups)} groups of Envoys running at once ({ROUNDS} shuffled {DURATION} slices each). "
             f"A phase's cost is the median, over rounds, of the whole build's CPU per request less the variant's "
             f"in the same round. Whole: {whole:.1f} µs per request, "
             f"{paired(first, 'phases-whole', 'floor'):+.1f} above the no-op Wasm floor. Phases overlap (switching "
             f"the body off also skips the checks on it), so the rows need not add up.", "",
             "| phase | cost µs/request |", "|---|---|"]
    for group in groups:
        if "phases-after_header_read" in group:
            lines.append(f"| reading the request headers (one map call read in place; vs the no-op floor, "
                         f"response phase included) | {paired(group, 'phases-after_header_read', 'floor'):+.1f} |")
    for name, part, _ in PHASES:
        for group in groups:
            if f"phases-{name}" in group and name != "after_header_read":
                lines.append(f"| {part} | {paired(group, 'phases-whole', f'phases-{name}'):+.1f} |")
    return lines


def build_phase_switches() -> None:
    """The filter with `phase-switches`, beside the production build."""
    cargo = ["cargo", "build", "--release", "--target", "wasm32-wasip1", "-p", "mcp-edge-filter"]
    # The same whole-program optimisation as `make wasm`.
    env = dict(os.environ, CARGO_PROFILE_RELEASE_LTO="fat", CARGO_PROFILE_RELEASE_CODEGEN_UNITS="1")
    subprocess.run(cargo + ["--features", "phase-switches"], cwd=ROOT, check=True, env=env)
    PHASES_WASM.write_bytes(WASM.read_bytes())
    subprocess.run(cargo, cwd=ROOT, check=True, env=env)


def measure(envoy: str, token: str, workers: int, variants: dict, latency_skipped: set,
            saturated: dict, fixed: dict) -> None:
    """Every variant at once; the load moves between them in shuffled slices."""
    running = {}
    try:
        for name, text in variants.items():
            listen, admin = free_port(), free_port()
            process = start_envoy(envoy, render(text, {"LISTEN_PORT": listen, "ADMIN_PORT": admin}),
                                  f"{name}-{workers}w", workers)
            running[name] = (process, listen, admin)
        for name, (process, listen, admin) in running.items():
            wait_ready(admin)
            run_wrk(listen, token, process.pid, workers)  # warm-up (V8 JIT, caches)
        rng = random.Random(workers)
        for round_index in range(ROUNDS):
            order = list(running)
            rng.shuffle(order)
            for name in order:
                process, listen, _ = running[name]
                result = run_wrk(listen, token, process.pid, workers)
                saturated.setdefault((workers, name), []).append(result)
                print(f"round {round_index + 1} {workers}w {name:28} {result['rps']:9.0f} req/s  "
                      f"p99 {result['p99']:.3f} ms  envoy cpu {result['cpu_us']:.1f} us/req", flush=True)
        for round_index in range(FIXED_ROUNDS):
            order = [n for n in running if n not in latency_skipped]
            rng.shuffle(order)
            for name in order:
                _, listen, _ = running[name]
                at_rate = run_oha(listen, token, workers)
                fixed.setdefault((workers, name), []).append(at_rate)
                print(f"fixed {round_index + 1} {workers}w {name:28} at {RATE}/s: p50 {at_rate['p50']:.3f} ms  "
                      f"p99 {at_rate['p99']:.3f} ms", flush=True)
    finally:
        for process, _, _ in running.values():
            stop(process)


def main() -> int:
    envoy = subprocess.run([str(ROOT / "scripts" / "ensure-envoy.sh")], capture_output=True, text=True,
                           check=True).stdout.strip()
    STATE.mkdir(parents=True, exist_ok=True)
    if BREAKDOWN:
        build_phase_switches()
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
    # BENCH_FILTER_PATCH='{"rate_limits": {}}' changes the filter's settings for an experiment.
    filter_config.update(json.loads(os.environ.get("BENCH_FILTER_PATCH", "{}")))
    sink = SpanSink(RECEIVER)
    # Ports are filled in per Envoy when it starts (every variant runs at once).
    common = {"ADMIN_PORT": "${ADMIN_PORT}", "LISTEN_PORT": "${LISTEN_PORT}", "STANDIN_PORT": standin_port,
              "TRACING": "", "CLUSTERS": ""}
    # Tracing on: the gateway's own tracing block (every request sampled) and its collector.
    traced = {**common, "CLUSTERS": collector_cluster(sink.port), "TRACING": render(
        (ROOT / "envoy" / "tracing.yaml.tmpl").read_text(), {"SAMPLING_PERCENT": 100, "SERVICE_NAME": "bench-edge"})}
    traced_config = {**filter_config, "tracing": {}}
    variant_template = (HERE / "edge-variant.yaml.tmpl").read_text()
    variants = {
        "bare": render(variant_template, {**common, "HTTP_FILTERS": ""}),
        "native": render(variant_template, {**common, "HTTP_FILTERS": render(
            (HERE / "native-filters.yaml.tmpl").read_text(),
            {"ISSUER": filter_config["jwt"]["issuer"], "AUDIENCE": f"{base_url}/mcp",
             "JWKS": json.dumps(filter_config["jwt"]["jwks"])})}),
        "native_mcp": render(variant_template, {**common, "HTTP_FILTERS": render(
            (HERE / "native-mcp-filters.yaml.tmpl").read_text(),
            {"ISSUER": filter_config["jwt"]["issuer"], "AUDIENCE": f"{base_url}/mcp",
             "JWKS": json.dumps(filter_config["jwt"]["jwks"])})}),
        "floor": render(variant_template, {**common, "HTTP_FILTERS": render(
            (HERE / "ours-filter.yaml.tmpl").read_text(), {"WASM_PATH": NOOP_WASM, "FILTER_CONFIG": "{}"})}),
        "ours": render(variant_template, {**common, "HTTP_FILTERS": render(
            (HERE / "ours-filter.yaml.tmpl").read_text(),
            {"WASM_PATH": WASM, "FILTER_CONFIG": json.dumps(filter_config)})}),
        "ours_native": render(variant_template, {**common, "HTTP_FILTERS": render(
            (ROOT / "envoy" / "dynamic-module-filter.yaml.tmpl").read_text(),
            {"MODULE_PATH": NATIVE_MODULE, "FILTER_CONFIG": json.dumps(filter_config)})}),
        "ours_traced": render(variant_template, {**traced, "HTTP_FILTERS": render(
            (HERE / "ours-filter.yaml.tmpl").read_text(),
            {"WASM_PATH": WASM, "FILTER_CONFIG": json.dumps(traced_config)})}),
        "ours_native_traced": render(variant_template, {**traced, "HTTP_FILTERS": render(
            (ROOT / "envoy" / "dynamic-module-filter.yaml.tmpl").read_text(),
            {"MODULE_PATH": NATIVE_MODULE, "FILTER_CONFIG": json.dumps(traced_config)})}),
    }
    # Experiments only (BENCH_VARIANTS): Envoy's tracer without any filter,
    # with and without the decision tags, to tell its cost from ours; ours
    # with 10 % of requests sampled.
    untagged = "\n".join(line for line in traced["TRACING"].splitlines()
                         if "- { tag:" not in line and "custom_tags:" not in line)
    sampled_10 = {**traced, "TRACING": render((ROOT / "envoy" / "tracing.yaml.tmpl").read_text(),
                                              {"SAMPLING_PERCENT": 10, "SERVICE_NAME": "bench-edge"})}
    experiments = {
        "ours_traced_10pct": render(variant_template, {**sampled_10, "HTTP_FILTERS": render(
            (HERE / "ours-filter.yaml.tmpl").read_text(),
            {"WASM_PATH": WASM, "FILTER_CONFIG": json.dumps(traced_config)})}),
        "bare_traced": render(variant_template, {**traced, "HTTP_FILTERS": ""}),
        # Another build of the filter (BENCH_BASELINE_WASM=FILE) beside ours in the same run:
        # a change's cost measured against the build before it, not against last week's run.
        "ours_baseline": render(variant_template, {**common, "HTTP_FILTERS": render(
            (HERE / "ours-filter.yaml.tmpl").read_text(),
            {"WASM_PATH": os.environ.get("BENCH_BASELINE_WASM", WASM), "FILTER_CONFIG": json.dumps(filter_config)})}),
        "bare_traced_untagged": render(variant_template, {**traced, "TRACING": untagged, "HTTP_FILTERS": ""}),
    }
    breakdown = {}
    if BREAKDOWN:
        for name, _, patch in [("whole", "", {})] + PHASES:
            config = {k: v for k, v in {**filter_config, **patch}.items() if v is not None}
            breakdown[f"phases-{name}"] = render(variant_template, {**common, "HTTP_FILTERS": render(
                (HERE / "ours-filter.yaml.tmpl").read_text(),
                {"WASM_PATH": PHASES_WASM, "FILTER_CONFIG": json.dumps(config)})})
    standin = start_envoy(envoy, render((HERE / "upstream-standin.yaml.tmpl").read_text(),
                                        {"STANDIN_PORT": standin_port, "STANDIN_ADMIN_PORT": standin_admin}),
                          "standin")
    # BENCH_VARIANTS=bare,ours narrows a quick experiment (the table needs all three).
    only = [v for v in os.environ.get("BENCH_VARIANTS", "").split(",") if v]
    floor_text = variants["floor"]
    if only:
        variants = {name: text for name, text in {**variants, **experiments}.items() if name in only}
    saturated, fixed, groups = {}, {}, []
    try:
        wait_ready(standin_admin)
        for workers in WORKERS:
            measure(envoy, token, workers, variants, set(), saturated, fixed)
        if BREAKDOWN:
            # Two groups of at most seven Envoys: fewer at once are quieter.
            half = (len(PHASES) + 1) // 2
            for part in (PHASES[:half], PHASES[half:]):
                names = ["phases-whole"] + [f"phases-{name}" for name, _, _ in part]
                texts = {"floor": floor_text, **{n: breakdown[n] for n in names}}
                runs = {}
                measure(envoy, token, WORKERS[0], texts, set(texts), runs, {})
                groups.append({name: results for (_, name), results in runs.items()})
    finally:
        stop(standin)
        spans = sink.close()

    def medians(results):
        return {key: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for key, runs in results.items()}
    sat, fix = medians(saturated), medians(fixed)
    if only:
        # A quick experiment: medians only, no table written.
        for (workers, name), m in sat.items():
            print(f"median {workers}w {name:28} {m['rps']:9.0f} req/s  envoy cpu {m['cpu_us']:.1f} us/req")
        if groups:
            print("\n".join(breakdown_lines(groups, WORKERS[0])))
        return 0
    labels = [("bare", "bare Envoy"), ("native", "jwt_authn + local_ratelimit"),
              ("native_mcp", "**native MCP stack** (mcp + jwt_authn + local_ratelimit)"),
              ("floor", "no-op Wasm filter (V8 floor)"), ("ours", "**mcp_edge Wasm filter**"),
              ("ours_native", "mcp_edge decision core as a dynamic module (native)"),
              ("ours_traced", "mcp_edge Wasm filter, tracing on (100 % sampled)"),
              ("ours_native_traced", "dynamic module, tracing on (100 % sampled)")]
    lines = [
        f"Medians of {ROUNDS} shuffled {DURATION} slices per variant, every variant running at once; Envoy 1.40 with {', '.join(map(str, WORKERS))} worker(s) on a "
        f"{os.cpu_count()}-core machine; the same upstream stand-in (Envoy answering after reading the body); POST "
        f"tools/list with a bearer JWT. The reference is Envoy's own MCP stack: the MCP filter parsing the body "
        f"(REJECT_NO_MCP), jwt_authn (cache on) and a per-user local rate limit. Ours verifies the JWT (warm "
        f"token cache), checks JSON-RPC and MCP rules on the held body, takes a per-caller and a per-org bucket "
        f"in shared data, and signs the identity assertion for the upstream; the dynamic module runs the same "
        f"decisions with the same settings as native code.",
        "",
        f"Saturated (wrk, {CONNECTIONS} connections, {DURATION}) and at a fixed rate (oha, {RATE} requests/s for "
        f"{FIXED_SECONDS} s, {FIXED_ROUNDS} rounds, latency corrected for coordinated omission).",
        "",
        "| workers | edge | requests/s | vs native MCP | Envoy CPU µs/request | saturated p99 ms | at-rate p50 ms | at-rate p99 ms | p99 − bare at rate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for workers in WORKERS:
        reference = sat[(workers, "native_mcp")]["rps"]
        bare_p99 = fix[(workers, "bare")]["p99"]
        for name, label in labels:
            m, f = sat[(workers, name)], fix[(workers, name)]
            lines.append(f"| {workers} | {label} | {m['rps']:.0f} | {m['rps'] / reference:.2f} | {m['cpu_us']:.1f} | "
                         f"{m['p99']:.3f} | {f['p50']:.3f} | {f['p99']:.3f} | {f['p99'] - bare_p99:+.3f} |")
    lines.append("")
    for workers in WORKERS:
        ours, mcp = sat[(workers, "ours")], sat[(workers, "native_mcp")]
        lines.append(f"- {workers} worker(s): ours {ours['rps'] / mcp['rps']:.2f}× the native MCP stack's throughput "
                     f"(target ≥ 1.00), {ours['cpu_us'] - sat[(workers, 'floor')]['cpu_us']:+.1f} µs of Envoy CPU per "
                     f"request above the no-op Wasm floor, against {mcp['cpu_us'] - sat[(workers, 'bare')]['cpu_us']:+.1f} µs "
                     f"the native MCP stack adds to bare Envoy; p99 at {RATE}/s "
                     f"{fix[(workers, 'ours')]['p99'] - fix[(workers, 'bare')]['p99']:+.3f} ms from bare (target ≤ 0.3 ms).")
        native = sat[(workers, "ours_native")]
        lines.append(f"- {workers} worker(s), the same decisions as a dynamic module: {native['rps'] / mcp['rps']:.2f}× the "
                     f"native MCP stack's throughput, {native['cpu_us'] - sat[(workers, 'bare')]['cpu_us']:+.1f} µs of Envoy "
                     f"CPU per request above bare Envoy; p99 at {RATE}/s "
                     f"{fix[(workers, 'ours_native')]['p99'] - fix[(workers, 'bare')]['p99']:+.3f} ms from bare.")
    traced_requests = sum(r["requests"] for (_, name), runs in saturated.items() if name.endswith("_traced")
                          for r in runs)
    if spans < traced_requests * 0.9:
        raise RuntimeError(f"the receiver got {spans} spans for {traced_requests} traced requests: tracing is not on")
    for workers in WORKERS:
        for plain, label in (("ours", "Wasm filter"), ("ours_native", "dynamic module")):
            on, off = sat[(workers, f"{plain}_traced")], sat[(workers, plain)]
            lines.append(f"- {workers} worker(s), tracing on at 100 % ({label}): {on['rps'] / off['rps']:.2f}× its "
                         f"throughput with tracing off (target ≥ 0.95), {on['cpu_us'] - off['cpu_us']:+.1f} µs of "
                         f"Envoy CPU per request; p99 at {RATE}/s {fix[(workers, f'{plain}_traced')]['p99'] - fix[(workers, plain)]['p99']:+.3f} ms.")
    lines.append(f"- The receiver counted {spans} spans for {traced_requests} saturated traced requests (fixed-rate "
                 f"runs add more): every request exported its span.")
    if groups:
        lines += breakdown_lines(groups, WORKERS[0])
    table = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results" / "edge.md"
    out.write_text("# make bench-edge\n\n" + table)
    print("\n" + table)
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
