#!/usr/bin/env python3
"""make bench-stack: the whole stack under load, through Envoy and the filter.

Real processes on loopback: Envoy 1.40 with the built filter (2 workers), the
upstream (release build), and the OpenAI fake as a process (release build,
the provider's wire format, cached images so the fake is not the bottleneck).

  instant  the fake answers at once; oha saturates with 50 connections:
           sustained tools/call per second and latency.
  burst    the fake takes 10 s per generation; 5,000 calls arrive at 500 per
           second (about 5,000 in flight at the peak): every call must
           succeed.
  traced   tracing's cost: two instant stacks at once, tracing off and on
           (100 % sampling, Envoy and the upstream exporting to a local
           OTLP/gRPC receiver that counts spans); saturated oha slices
           alternate between them in shuffled rounds, medians compared.
  pool     a capped self-hosted model (OpenAI-compatible fake, 10 s per
           image, max_in_flight 64, wait line with a 10 s timeout) first in
           the chain, an instant OpenAI model after it; 5,000 calls at 500
           per second: queue wait p50/p99 (the upstream's histogram), spills,
           the most the pool had in flight, and the upstream's memory per
           call in flight or waiting.
  edit     the fake takes 10 s per edit; 1,000 edit_image calls arrive at 100
           per second (about 1,000 in flight), each in-painting a region of the
           same 1024x1024 upload (read, checked and sent to the provider per
           call): zero errors, processing p99 under 50 ms, and the upstream's
           memory per edit in flight.
  credentials  Content Credentials' cost: two instant stacks answering a
           photo-like 1024x1024 PNG (1.5 MB), signing off and required;
           saturated slices alternate between them (calls/s), then paced
           slices (50/s: latency without queueing), then a 10 s-model burst
           on each (memory per call in flight); signing time from the
           upstream's histogram.
  moderation  prompt moderation's cost: two instant stacks, no policy and
           `moderation: prompts` against the fake's instant moderations
           endpoint; the same saturated and paced slices.

Server processing excluding model time comes from the upstream's audit
events (`processing_ms` = the call's latency less the time spent waiting for
the model); the upstream's peak RSS from /proc (VmHWM). Writes
bench/results/stack.md.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import SpanSink, free_port, wait_http, stop, peak_rss_mib, rss_mib, percentile, cpu_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def state_dir() -> Path:
    """Where the stacks keep their state and stored images: BENCH_STATE_DIR,
    else a tmpfs with room for them, else .state/. The local store stands in
    for object storage, and this machine's disk does not hold still: with
    thousands of images written and deleted per slice, the upstream's system
    time per call grew slice by slice on ext4 (not on tmpfs)."""
    if os.environ.get("BENCH_STATE_DIR"):
        return Path(os.environ["BENCH_STATE_DIR"])
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free >= 8 << 30:
        return shm / "mcp-bench-stack"
    return ROOT / ".state" / "bench-stack"


STATE = state_dir()
ON_TMPFS = STATE.is_relative_to("/dev/shm")
RELEASE = ROOT / "target" / "release"
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "mcp_edge_filter.wasm"
BURST_RATE = int(os.environ.get("BENCH_BURST_RATE", "500"))
EDIT_RATE = int(os.environ.get("BENCH_EDIT_RATE", "100"))
EDIT_SECONDS = int(os.environ.get("BENCH_EDIT_SECONDS", "10"))
BURST_SECONDS = int(os.environ.get("BENCH_BURST_SECONDS", "10"))
MODEL_LATENCY_MS = int(os.environ.get("BENCH_MODEL_LATENCY_MS", "10000"))
INSTANT_SECONDS = int(os.environ.get("BENCH_INSTANT_SECONDS", "15"))
TRACE_ROUNDS = int(os.environ.get("BENCH_TRACE_ROUNDS", "6"))
POOL_CAP = int(os.environ.get("BENCH_POOL_CAP", "64"))
POOL_TIMEOUT_SECS = int(os.environ.get("BENCH_POOL_TIMEOUT_SECS", "10"))
TRACE_SLICE = os.environ.get("BENCH_TRACE_SLICE", "4s")
PACED_SLICE = os.environ.get("BENCH_PACED_SLICE", "5s")
PACED_RATE = int(os.environ.get("BENCH_PACED_RATE", "50"))
BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "generate_image", "arguments": {"prompt": "a kite over a beach"}}})












def photo_like_png(width: int, height: int) -> bytes:
    """An RGB PNG that compresses like a photo (~1 MB at 1024x1024), not like a flat colour."""
    import random
    import struct
    import zlib
    rng = random.Random(7)
    rows = []
    for y in range(height):
        noise = rng.randbytes(width * 3)
        rows.append(b"\x00" + bytes(((x * 3 + y) & 0xF0) | (n & 0x03) for x, n in enumerate(noise)))
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows), 6))
            + chunk(b"IEND", b""))




class Stackup:
    """Fake, upstream and Envoy for one scenario; stopped by close()."""

    def __init__(self, envoy: str, model_latency_ms: int, name: str, otlp_endpoint: str = "",
                 pool: dict = None, env: dict = None, png: Path = None):
        self.processes = []
        self.dir = STATE / name
        shutil.rmtree(self.dir, ignore_errors=True)  # a fresh stack, and no images left from the last run
        self.dir.mkdir(parents=True, exist_ok=True)
        fake_info = self.fake(model_latency_ms, *(["--png", str(png)] if png else []))
        extra_env = env or {}
        upstream_port, metrics_port, listen_port, admin_port = free_port(), free_port(), free_port(), free_port()
        self.metrics_port = metrics_port
        self.base_url = f"http://127.0.0.1:{listen_port}"
        binary = str(RELEASE / "mcp-image-gateway")
        subprocess.run([binary, "dev-init", "--state-dir", str(self.dir)], check=True, capture_output=True)
        self.upstream_log = self.dir / "upstream.log"
        env = dict(os.environ, RUST_LOG="info,rmcp=warn", GATEWAY_BACKEND="openai",
                   OPENAI_API_KEY=fake_info["api_key"], OPENAI_BASE_URL=f"{fake_info['base_url']}/v1",
                   GATEWAY_LISTEN=f"127.0.0.1:{upstream_port}", GATEWAY_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
                   GATEWAY_PUBLIC_BASE_URL=self.base_url, GATEWAY_STATE_DIR=str(self.dir),
                   GATEWAY_MAX_ATTEMPTS="1", **extra_env)
        if pool:
            # The capped pool first, then the instant OpenAI model.
            pool_info = self.fake(pool["latency_ms"], "--compatible")
            self.pool_url = pool_info["base_url"]
            models = json.loads((ROOT / "upstream/src/routing/models.json").read_text())
            models.append({"model": "pool", "provider": "openai-compatible", "sizes": ["1024x1024"],
                           "qualities": ["auto", "low", "medium", "high"], "output_formats": ["png"],
                           "transparent_background": False, "max_images": 1, "usd_per_image": 0.0005,
                           "concurrency": pool["concurrency"]})
            (self.dir / "models.json").write_text(json.dumps(models))
            env.update(GATEWAY_BACKEND="openai-compatible", OPENAI_COMPATIBLE_MODEL="pool",
                       OPENAI_COMPATIBLE_BASE_URL=f"{pool_info['base_url']}/v1",
                       OPENAI_COMPATIBLE_API_KEY=pool_info["api_key"],
                       GATEWAY_MODELS_FILE=str(self.dir / "models.json"),
                       GATEWAY_FALLBACK_MODELS="openai:gpt-image-1-mini")
        # Tracing on for Envoy (render-envoy, filter-config) and the upstream alike, or off.
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        if otlp_endpoint:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
        self.upstream = subprocess.Popen([binary, "serve"], env=env, stdout=open(self.upstream_log, "w"),
                                         stderr=subprocess.STDOUT)
        self.processes.append(self.upstream)
        filter_config = json.loads(subprocess.run(
            [binary, "filter-config", "--state-dir", str(self.dir), "--public-base-url", self.base_url],
            capture_output=True, text=True, check=True, env=env).stdout)
        # Limits high enough that the run measures the stack, not its refusals.
        filter_config["rate_limits"] = {
            "per_caller": {"requests_per_second": 1e6, "burst": 1_000_000},
            "per_org": {"requests_per_second": 1e6, "burst": 1_000_000},
            "daily_images_per_org": 1_000_000_000,
        }
        (self.dir / "filter.json").write_text(json.dumps(filter_config))
        config = self.dir / "envoy.yaml"
        subprocess.run([binary, "render-envoy", "--template", str(ROOT / "envoy/envoy.yaml.tmpl"), "--out", str(config),
                        "--state-dir", str(self.dir),
                        "--set", f"LISTEN_PORT={listen_port}", "--set", f"ADMIN_PORT={admin_port}",
                        "--set", f"UPSTREAM_PORT={upstream_port}", "--set", f"WASM_PATH={WASM}",
                        "--set-file", f"FILTER_CONFIG={self.dir / 'filter.json'}"],
                       check=True, capture_output=True, env=env)
        self.envoy = subprocess.Popen([envoy, "-c", str(config), "--use-dynamic-base-id", "--concurrency", "2",
                                       "--log-level", "error"], stdout=open(self.dir / "envoy.log", "w"),
                                      stderr=subprocess.STDOUT)
        self.processes.append(self.envoy)
        wait_http(f"http://127.0.0.1:{upstream_port}/healthz")
        wait_http(f"http://127.0.0.1:{admin_port}/ready")
        self.token = subprocess.run([binary, "token", "--state-dir", str(self.dir), "--public-base-url", self.base_url],
                                    capture_output=True, text=True, check=True).stdout.strip()

    def fake(self, latency_ms: int, *flags: str) -> dict:
        """An OpenAI fake process: its base URL and key."""
        fake = subprocess.Popen([str(RELEASE / "fake-openai"), "--latency-ms", str(latency_ms), *flags],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.processes.append(fake)
        return json.loads(fake.stdout.readline())

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def oha(self, *args: str, body: str = BODY) -> dict:
        out = subprocess.run(
            ["oha", "--no-tui", "--output-format", "json", "-m", "POST", *args,
             "-H", "Content-Type: application/json", "-H", "Accept: application/json, text/event-stream",
             "-H", "MCP-Protocol-Version: 2025-06-18", "-H", f"Authorization: Bearer {self.token}",
             "-d", body, f"{self.base_url}/mcp"],
            capture_output=True, text=True, check=True).stdout
        return json.loads(out)

    def call(self, tool: str, arguments: dict) -> dict:
        request = urllib.request.Request(
            f"{self.base_url}/mcp", method="POST",
            data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                             "params": {"name": tool, "arguments": arguments}}).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                     "MCP-Protocol-Version": "2025-06-18", "Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["result"]["structuredContent"]

    def upload(self, png: bytes) -> str:
        """An upload://… reference holding `png` (create_upload, then PUT)."""
        ticket = self.call("create_upload", {"content_type": "image/png"})
        request = urllib.request.Request(ticket["upload_url"], method="PUT", data=png,
                                         headers=ticket["headers"])
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 201, response.status
        return ticket["reference"]

    def audit(self) -> list:
        events = []
        for line in self.upstream_log.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("target") == "audit":
                events.append(event["fields"])
        return events

    def close(self) -> None:
        for process in reversed(self.processes):
            stop(process)
        # The stored images (gigabytes at 1.5 MB each); logs and keys stay for a look.
        shutil.rmtree(self.dir / "images", ignore_errors=True)


def summarize(name: str, report: dict, stack: Stackup, skip: int, tool: str = "generate_image") -> dict:
    events = [e for e in stack.audit()[skip:] if e.get("tool") == tool]
    codes = report.get("statusCodeDistribution", {})
    errors = sum(report.get("errorDistribution", {}).values())
    processing = [e["processing_ms"] for e in events if "processing_ms" in e]
    succeeded = sum(1 for e in events if e.get("outcome") == "Success")
    result = {
        "name": name,
        "requests": sum(codes.values()) + errors,
        "non_200": sum(v for k, v in codes.items() if k != "200") + errors,
        "tool_calls": len(events),
        "succeeded": succeeded,
        "rps": report["summary"]["requestsPerSec"],
        "p50": report["latencyPercentiles"]["p50"] * 1000,
        "p99": report["latencyPercentiles"]["p99"] * 1000,
        "proc_p50": percentile(processing, 50) if processing else float("nan"),
        "proc_p95": percentile(processing, 95) if processing else float("nan"),
        "proc_p99": percentile(processing, 99) if processing else float("nan"),
        "rss": peak_rss_mib(stack.upstream.pid),
    }
    print(json.dumps(result), flush=True)
    return result


def buckets(metrics: str, family: str) -> dict:
    """A Prometheus histogram's cumulative bucket counts, summed over its series: {upper bound: count}."""
    counts = {}
    for line in metrics.splitlines():
        if line.startswith(f"{family}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            counts[bound] = counts.get(bound, 0) + float(line.split("}", 1)[1].split()[0])
    return counts


def since(now: dict, then: dict) -> dict:
    """The observations between two bucket snapshots."""
    return {bound: count - then.get(bound, 0) for bound, count in now.items()}


def bucket_of(counts: dict, q: float) -> str:
    """The bucket quantile `q` falls in, as `low–high` s."""
    ordered = sorted(counts.items())
    total = ordered[-1][1] if ordered else 0
    if not total:
        return "—"
    low = 0.0
    for bound, count in ordered:
        if count >= q * total:
            return f"{low:g}–{bound:g}" if bound != float("inf") else f"over {low:g}"
        low = bound
    return f"over {low:g}"


def share_under(counts: dict, bound: float) -> float:
    """The share of observations at or under `bound` (one of the buckets)."""
    total = counts.get(float("inf"), 0)
    under = next((c for b, c in counts.items() if abs(b - bound) < 1e-12), 0)
    return under / total if total else float("nan")


def histogram_bucket(metrics: str, family: str, q: float) -> str:
    return bucket_of(buckets(metrics, family), q)


def series_total(metrics: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(prefix))


class HeldSampler:
    """Samples, twice a second, how many calls the upstream holds (in flight
    and waiting) and its RSS at that moment: memory per call held is the RSS
    at the most calls held, less the RSS before, over that count (the peak
    RSS also counts what finishing calls allocate: results, stored images)."""

    def __init__(self, stack: "Stackup"):
        import threading
        self.before = rss_mib(stack.upstream.pid)
        self.most, self.rss_at_most = 0, 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(stack,), daemon=True)
        self._thread.start()

    def _run(self, stack: "Stackup") -> None:
        while not self._done.wait(0.5):
            try:
                now = int(series_total(stack.metrics(), "mcp_gateway_tool_calls_in_flight"))
                rss = rss_mib(stack.upstream.pid)
            except OSError:
                continue
            if now > self.most:
                self.most, self.rss_at_most = now, rss

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def kib_per_call(self, rss_mib_then: float | None = None) -> float:
        """KiB per call held: at the most calls held, or from `rss_mib_then` (e.g. the peak)."""
        rss = self.rss_at_most if rss_mib_then is None else rss_mib_then
        return (rss - self.before) * 1024 / max(self.most, 1)


def pool_burst(envoy: str) -> dict:
    """5,000 calls at 500/s onto a pool capped at 64, with a fallback after it."""
    stack = Stackup(envoy, 0, "pool", pool={
        "latency_ms": MODEL_LATENCY_MS,
        "concurrency": {"max_in_flight": POOL_CAP, "max_queue": BURST_RATE * BURST_SECONDS,
                        "queue_timeout_secs": POOL_TIMEOUT_SECS}})
    try:
        total = BURST_RATE * BURST_SECONDS
        held = HeldSampler(stack)
        report = stack.oha("-n", str(total), "-q", str(BURST_RATE), "-c", str(total + 500), "--latency-correction",
                           "-t", "120s")
        held.stop()
        metrics = stack.metrics()
        events = [e for e in stack.audit() if e.get("tool") == "generate_image"]
        result = {
            "calls": total,
            "succeeded": sum(1 for e in events if e.get("outcome") == "Success"),
            "by_pool": sum(1 for e in events if e.get("model") == "pool"),
            "spilled": int(series_total(metrics, 'mcp_gateway_capacity_spills_total{model="pool"')),
            "max_in_flight": json.loads(urllib.request.urlopen(f"{stack.pool_url}/_fake/stats", timeout=10).read())[
                "max_in_flight"],
            "wait_p50": histogram_bucket(metrics, "mcp_gateway_pool_wait_duration_seconds", 0.5),
            "wait_p99": histogram_bucket(metrics, "mcp_gateway_pool_wait_duration_seconds", 0.99),
            "rss": peak_rss_mib(stack.upstream.pid),
            "held": held.most,
            "non_200": sum(v for k, v in report.get("statusCodeDistribution", {}).items() if k != "200"),
        }
        result["kib_per_call"] = held.kib_per_call()
        result["kib_peak"] = held.kib_per_call(result["rss"])
        print(json.dumps(result), flush=True)
        return result
    finally:
        stack.close()


def alternating(stacks: dict, *oha_args: str, rounds: int = TRACE_ROUNDS) -> dict:
    """oha slices alternating between `stacks` over shuffled rounds (the machine's
    noise falls on both alike); per stack, each slice's numbers and the
    processing times of its calls (audit events). Any failed call stops the run."""
    import random
    runs = {name: [] for name in stacks}
    rng = random.Random(18)
    for _ in range(rounds):
        order = list(stacks)
        rng.shuffle(order)
        for name in order:
            stack = stacks[name]
            time.sleep(0.5)  # the last slice's audit lines written
            seen = len(stack.audit())
            cpu_before = cpu_seconds(stack.upstream.pid), cpu_seconds()
            report = stack.oha(*oha_args, "--wait-ongoing-requests-after-deadline")
            cpu_after = cpu_seconds(stack.upstream.pid), cpu_seconds()
            codes = report.get("statusCodeDistribution", {})
            calls = sum(codes.values())
            events = [e for e in stack.audit()[seen:] if e.get("tool") == "generate_image"]
            failed = [e.get("outcome") for e in events if e.get("outcome") != "Success"]
            if set(codes) - {"200"} or failed:
                raise RuntimeError(f"{name}: non-200 answers {codes}, failed calls {failed[:5]}")
            runs[name].append({"rps": report["summary"]["requestsPerSec"],
                               "p50": report["latencyPercentiles"]["p50"] * 1000,
                               "p99": report["latencyPercentiles"]["p99"] * 1000,
                               "calls": calls,
                               # CPU per call: the upstream's own, and the whole machine's (oha included).
                               "upstream_ms": (cpu_after[0] - cpu_before[0]) * 1000 / max(1, calls),
                               "machine_ms": (cpu_after[1] - cpu_before[1]) * 1000 / max(1, calls),
                               "processing": [e["processing_ms"] for e in events if "processing_ms" in e]})
            last = runs[name][-1]
            print(f"{name} {' '.join(oha_args)}: {last['rps']:.0f} calls/s, CPU per call: upstream "
                  f"{last['upstream_ms']:.2f} ms, machine {last['machine_ms']:.2f} ms; upstream RSS "
                  f"{rss_mib(stack.upstream.pid):.0f} MiB", flush=True)
            # Gigabytes of stored images would otherwise grow round by round
            # and the disk's writeback with them: not what is measured here.
            shutil.rmtree(stack.dir / "images", ignore_errors=True)
    return runs


def medians(runs: dict) -> dict:
    """Per stack: median calls/s and latency over its slices, processing
    percentiles over all its calls, and the per-round throughput ratios of the
    second stack to the first."""
    import statistics
    result = {}
    for name, slices in runs.items():
        processing = [p for s in slices for p in s["processing"]]
        result[name] = {k: statistics.median(s[k] for s in slices)
                        for k in ("rps", "p50", "p99", "upstream_ms", "machine_ms")}
        result[name].update(calls=sum(s["calls"] for s in slices), proc_p50=percentile(processing, 50),
                            proc_p99=percentile(processing, 99))
    base, other = list(runs)
    result["ratios"] = [b["rps"] / a["rps"] for a, b in zip(runs[base], runs[other])]
    return result


def a_b(envoy: str, variants: dict, png: Path = None) -> dict:
    """Two instant stacks side by side (`variants`: name -> upstream env):
    saturated slices (calls/s) and paced ones (latency, processing)."""
    stacks = {}
    try:
        for name, env in variants.items():
            stacks[name] = Stackup(envoy, 0, name, env=env, png=png)
        for stack in stacks.values():
            stack.oha("-z", "3s", "-c", "50", "--wait-ongoing-requests-after-deadline")  # warm-up
        saturated = medians(alternating(stacks, "-z", TRACE_SLICE, "-c", "50"))
        before_paced = {name: stack.metrics() for name, stack in stacks.items()}
        paced = medians(alternating(stacks, "-z", PACED_SLICE, "-q", str(PACED_RATE), "-c", "10"))
        metrics = {name: stack.metrics() for name, stack in stacks.items()}
    finally:
        for stack in stacks.values():
            stack.close()
    result = {"saturated": saturated, "paced": paced, "metrics": metrics, "before_paced": before_paced}
    print(json.dumps({k: v for k, v in result.items() if "metrics" not in k and k != "before_paced"}), flush=True)
    return result


def tracing_cost(envoy: str) -> dict:
    """Saturated slices alternating between a stack with tracing off and one with it on."""
    sink = SpanSink(RELEASE / "otlp-receiver")
    stacks = {}
    try:
        stacks["off"] = Stackup(envoy, 0, "traced-off")
        stacks["on"] = Stackup(envoy, 0, "traced-on", otlp_endpoint=sink.endpoint)
        for stack in stacks.values():
            stack.oha("-z", "3s", "-c", "50", "--wait-ongoing-requests-after-deadline")  # warm-up
        runs = alternating(stacks, "-z", TRACE_SLICE, "-c", "50")
    finally:
        for stack in stacks.values():
            stack.close()
        spans = sink.close()
    calls = sum(r["calls"] for r in runs["on"])
    if spans < calls:
        raise RuntimeError(f"the receiver got {spans} spans for {calls} traced calls: tracing is not on")
    result = medians(runs)
    result["spans"], result["calls"] = spans, calls
    print(json.dumps(result), flush=True)
    return result


def burst_memory(envoy: str, name: str, env: dict, png: Path) -> dict:
    """1,000 calls at 100/s onto a 10 s model: the upstream's memory per call held, and at its peak."""
    stack = Stackup(envoy, MODEL_LATENCY_MS, name, env=env, png=png)
    try:
        held = HeldSampler(stack)
        total = EDIT_RATE * EDIT_SECONDS
        report = stack.oha("-n", str(total), "-q", str(EDIT_RATE), "-c", str(total + 200), "--latency-correction",
                           "-t", "120s")
        held.stop()
        result = summarize(name, report, stack, 0)
        if result["succeeded"] != total:
            raise RuntimeError(f"{name}: {result['succeeded']} of {total} calls succeeded")
        result.update(held=held.most, kib_per_call=held.kib_per_call(), kib_peak=held.kib_per_call(result["rss"]),
                      signed=series_total(stack.metrics(), "mcp_gateway_images_signed_total"))
        return result
    finally:
        stack.close()


def credentials_cost(envoy: str) -> dict:
    """Content Credentials off and required, on photo-like 1024x1024 PNGs."""
    png = STATE / "photo-1024.png"
    png.write_bytes(photo_like_png(1024, 1024))
    variants = {"credentials-off": {"GATEWAY_PROVENANCE": "off"},
                "credentials-required": {"GATEWAY_PROVENANCE": "required"}}
    result = a_b(envoy, variants, png)
    signed = result["metrics"]["credentials-required"]
    family = "mcp_gateway_content_credentials_signing_duration_seconds"
    # Signing time in the paced slices (no queue for the CPU); the saturated ones for comparison.
    paced = since(buckets(signed, family), buckets(result["before_paced"]["credentials-required"], family))
    saturated = buckets(result["before_paced"]["credentials-required"], family)
    result["signing"] = {
        "paced": {"images": paced.get(float("inf"), 0), "p50": bucket_of(paced, 0.5), "p99": bucket_of(paced, 0.99),
                  "under_5ms": share_under(paced, 0.005)},
        "saturated": {"images": saturated.get(float("inf"), 0), "p50": bucket_of(saturated, 0.5),
                      "p99": bucket_of(saturated, 0.99), "under_5ms": share_under(saturated, 0.005)},
    }
    result["signed"] = series_total(signed, "mcp_gateway_images_signed_total")
    if series_total(result["metrics"]["credentials-off"], "mcp_gateway_images_signed_total"):
        raise RuntimeError("the stack with Content Credentials off signed images")
    result["memory"] = {name: burst_memory(envoy, f"{name}-burst", env, png) for name, env in variants.items()}
    result["png_kib"] = len(png.read_bytes()) / 1024
    return result


def moderation_cost(envoy: str) -> dict:
    """No content policy, and prompt moderation against the fake's instant moderations endpoint."""
    policy = STATE / "moderate-prompts.json"
    policy.write_text(json.dumps({"default": {"moderation": "prompts", "when_moderation_unavailable": "refuse"}}))
    result = a_b(envoy, {"no-policy": {}, "moderated": {"GATEWAY_CONTENT_POLICY_FILE": str(policy)}})
    checked = series_total(result["metrics"]["moderated"], "mcp_gateway_moderation_request_duration_seconds_count")
    if not checked:
        raise RuntimeError("the moderated stack sent no moderation request")
    result["checked"] = checked
    return result


def ab_rows(result: dict, labels: dict) -> list:
    """The table of an a_b() run: per stack, saturated calls/s and latency, paced processing."""
    lines = ["| stack | calls/s (saturated) | p50 ms | p99 ms | paced 50/s: p50 ms | p99 ms "
             "| processing p50 ms | processing p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for name, label in labels.items():
        sat, paced = result["saturated"][name], result["paced"][name]
        lines.append(f"| {label} | {sat['rps']:.0f} | {sat['p50']:.1f} | {sat['p99']:.1f} | {paced['p50']:.1f} | "
                     f"{paced['p99']:.1f} | {paced['proc_p50']:.2f} | {paced['proc_p99']:.2f} |")
    return lines


def cpu_lines(before: dict, after: dict, what: str) -> list:
    """What `what` costs in CPU per call, saturated (medians over the slices)."""
    added = after["upstream_ms"] - before["upstream_ms"]
    return [f"CPU per call, saturated (medians): the upstream {before['upstream_ms']:.2f} → "
            f"{after['upstream_ms']:.2f} ms, so {what} adds {added:.2f} ms; the whole machine (Envoy, the fake "
            f"and oha on the same 2 cores) {before['machine_ms']:.2f} → {after['machine_ms']:.2f} ms, of which "
            f"{what} is {added / after['machine_ms'] * 100:.0f} %."]


def credentials_section(c: dict) -> list:
    off, on = c["memory"]["credentials-off"], c["memory"]["credentials-required"]
    sat = c["saturated"]
    paced = c["paced"]
    p, s = c["signing"]["paced"], c["signing"]["saturated"]
    ratio = sat["credentials-required"]["rps"] / sat["credentials-off"]["rps"]
    return ["", "### Content Credentials' cost (C2PA signing)", "",
            f"Two instant-model stacks running at once, the fake answering every call with the same photo-like "
            f"1024x1024 PNG ({c['png_kib']:.0f} KiB), `GATEWAY_PROVENANCE=off` and `required` (every image signed "
            f"with the development certificate before it is stored); oha slices alternate between them over "
            f"{TRACE_ROUNDS} shuffled rounds: saturated ({TRACE_SLICE}, 50 connections; medians), then paced "
            f"({PACED_SLICE} at {PACED_RATE}/s: latency without queueing; percentiles over all calls).", "",
            *ab_rows(c, {"credentials-off": "Content Credentials off",
                         "credentials-required": "Content Credentials required"}), "",
            f"Signing one image, from the upstream's histogram: paced ({p['images']:.0f} images), p50 in the "
            f"{p['p50']} s bucket, p99 in the {p['p99']} s bucket, {p['under_5ms'] * 100:.1f} % within 5 ms "
            f"(target: p99 ≤ 5 ms per 1024x1024 PNG); saturated ({s['images']:.0f} images, 50 calls sharing 2 "
            f"cores), p50 {s['p50']} s, p99 {s['p99']} s. Processing p50 (paced) "
            f"{paced['credentials-off']['proc_p50']:.2f} → {paced['credentials-required']['proc_p50']:.2f} ms, p99 "
            f"{paced['credentials-off']['proc_p99']:.2f} → "
            f"{paced['credentials-required']['proc_p99']:.2f} ms. Throughput with signing: {ratio:.2f}× without "
            f"(target ≥ 0.90; per round: {', '.join(f'{x:.2f}' for x in sat['ratios'])}).", "",
            *cpu_lines(sat["credentials-off"], sat["credentials-required"], "signing"), "",
            f"Memory, a 10 s model and {EDIT_RATE * EDIT_SECONDS} calls at {EDIT_RATE}/s on each stack in turn:", "",
            "| stack | succeeded | calls held, most | KiB per call held | upstream peak RSS MiB "
            "| KiB per call held, from the peak RSS | images signed |", "|---|---|---|---|---|---|---|",
            *[f"| {label} | {m['succeeded']} / {m['tool_calls']} | {m['held']} | {m['kib_per_call']:.1f} | "
              f"{m['rss']:.0f} | {m['kib_peak']:.1f} | {m['signed']:.0f} |"
              for label, m in (("Content Credentials off", off), ("Content Credentials required", on))], "",
            f"Memory per call with signing: {on['kib_per_call'] / off['kib_per_call']:.2f}× at the most calls held, "
            f"{on['kib_peak'] / off['kib_peak']:.2f}× from the peak RSS (target: within 10 %)."]


def moderation_section(m: dict) -> list:
    paced, sat = m["paced"], m["saturated"]
    added = paced["moderated"]["proc_p99"] - paced["no-policy"]["proc_p99"]
    return ["", "### Prompt moderation's cost", "",
            f"Two instant-model stacks running at once: no content policy, and `moderation: prompts` (every prompt "
            f"sent to the fake's moderations endpoint, which answers at once, before the image model); the same "
            f"alternating saturated and paced slices. {m['checked']:.0f} prompts moderated.", "",
            *ab_rows(m, {"no-policy": "no content policy", "moderated": "prompts moderated"}), "",
            f"Moderation adds {added:.2f} ms to processing p99 (paced; target ≤ 2 ms); throughput "
            f"{sat['moderated']['rps'] / sat['no-policy']['rps']:.2f}× without it (per round: "
            f"{', '.join(f'{x:.2f}' for x in sat['ratios'])})."]


def main() -> int:
    envoy = subprocess.run([str(ROOT / "scripts" / "ensure-envoy.sh")], capture_output=True, text=True,
                           check=True).stdout.strip()
    STATE.mkdir(parents=True, exist_ok=True)
    print(f"stacks under {STATE}", flush=True)
    only = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
    if only:
        # A scenario on its own (credentials, moderation, pool): printed, bench/results/stack.md untouched.
        sections = {"credentials": lambda: credentials_section(credentials_cost(envoy)),
                    "moderation": lambda: moderation_section(moderation_cost(envoy)),
                    "pool": lambda: [json.dumps(pool_burst(envoy))]}
        for name in sorted(only):
            print("\n".join(sections[name]()))
        return 0
    results = []
    stack = Stackup(envoy, 0, "instant")
    try:
        stack.oha("-z", "3s", "-c", "50", "--wait-ongoing-requests-after-deadline")  # warm-up
        warm = len(stack.audit())
        results.append(summarize("instant model, saturated (50 connections)",
                                 stack.oha("-z", f"{INSTANT_SECONDS}s", "-c", "50", "--wait-ongoing-requests-after-deadline"), stack, warm))
    finally:
        stack.close()
    stack = Stackup(envoy, MODEL_LATENCY_MS, "burst")
    try:
        total = BURST_RATE * BURST_SECONDS
        held = HeldSampler(stack)
        report = stack.oha("-n", str(total), "-q", str(BURST_RATE), "-c", str(total + 500), "--latency-correction",
                           "-t", "120s")
        held.stop()
        results.append(summarize(
            f"{MODEL_LATENCY_MS / 1000:.0f} s model, {BURST_RATE}/s burst for {BURST_SECONDS} s", report, stack, 0))
        results[-1]["held"] = held.most
        results[-1]["kib_per_call"] = held.kib_per_call()
    finally:
        stack.close()

    traced = tracing_cost(envoy)
    pool = pool_burst(envoy)
    credentials = credentials_cost(envoy)
    moderation = moderation_cost(envoy)

    stack = Stackup(envoy, MODEL_LATENCY_MS, "edit")
    try:
        png = photo_like_png(1024, 1024)
        reference = stack.upload(png)
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                           "params": {"name": "edit_image", "arguments": {
                               "prompt": "add a red kite", "images": [reference],
                               "mask_region": {"x": 0, "y": 0, "width": 512, "height": 512}}}})
        before = rss_mib(stack.upstream.pid)
        total = EDIT_RATE * EDIT_SECONDS
        result = summarize(
            f"edits: {MODEL_LATENCY_MS / 1000:.0f} s model, {EDIT_RATE}/s for {EDIT_SECONDS} s, "
            f"{len(png) / 1e6:.1f} MB 1024x1024 input",
            stack.oha("-n", str(total), "-q", str(EDIT_RATE), "-c", str(total + 200), "--latency-correction",
                      "-t", "120s", body=body),
            stack, 0, tool="edit_image")
        in_flight = min(total, EDIT_RATE * MODEL_LATENCY_MS / 1000)
        result["per_edit_kib"] = (result["rss"] - before) * 1024 / in_flight
        result["input_kib"] = len(png) / 1024
        results.append(result)
    finally:
        stack.close()

    lines = [
        "Envoy 1.40 (2 workers) with the filter, the upstream and the OpenAI fake (release builds) on one "
        "2-core machine; every request a `tools/call` of `generate_image` with a bearer JWT, stored to the "
        f"local filesystem ({'tmpfs' if ON_TMPFS else 'disk'}) with a signed link. Processing = the upstream's time for the call less the time "
        "waiting for the model (audit events).",
        "",
        "| scenario | requests | non-200 | tool calls succeeded | calls/s | p50 ms | p99 ms "
        "| processing p50 ms | p95 ms | p99 ms | upstream peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {r['requests']} | {r['non_200']} | {r['succeeded']} / {r['tool_calls']} | "
                     f"{r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['proc_p50']:.2f} | "
                     f"{r['proc_p95']:.2f} | {r['proc_p99']:.2f} | {r['rss']:.0f} |")
    burst, edit = results[1], results[2]
    lines += ["", f"Targets: processing p95 < 1000 ms (PRD) and p99 < 5 ms; the burst with zero errors "
                  f"(measured: {burst['non_200']} non-200, {burst['tool_calls'] - burst['succeeded']} failed calls)."]
    if pool["max_in_flight"] > POOL_CAP:
        raise RuntimeError(f"the pool had {pool['max_in_flight']} calls in flight, over its cap of {POOL_CAP}")
    lines += ["", f"Edits: {edit['non_200']} non-200, {edit['tool_calls'] - edit['succeeded']} failed calls; processing "
                  f"p99 {edit['proc_p99']:.1f} ms (target < 50 ms: reading the {edit['input_kib']:.0f} KiB input from "
                  f"the store, checking its header, drawing the mask, building the multipart request, storing and "
                  f"signing the result); upstream memory {edit['per_edit_kib']:.0f} KiB per edit in flight "
                  f"(peak RSS less RSS before the run, over {min(EDIT_RATE * EDIT_SECONDS, EDIT_RATE * MODEL_LATENCY_MS // 1000)} "
                  f"edits in flight), against an input of {edit['input_kib']:.0f} KiB: each edit holds its input bytes "
                  f"once, shared with the provider request, plus its mask."]
    lines += ["", "### A capped self-hosted pool under a burst", "",
              f"The pool (OpenAI-compatible fake, {MODEL_LATENCY_MS / 1000:.0f} s per image) is first in the chain "
              f"with max_in_flight {POOL_CAP} and a {POOL_TIMEOUT_SECS} s wait; an instant OpenAI model follows. "
              f"{BURST_RATE * BURST_SECONDS} calls at {BURST_RATE}/s.", "",
              "| calls | succeeded | served by the pool | spilled (queue timeout / full) | pool in flight, most | "
              "queue wait p50 (bucket, s) | p99 (bucket, s) | upstream peak RSS MiB | KiB per call held "
              "(in flight or waiting) | KiB per call held, from the peak RSS |",
              "|---|---|---|---|---|---|---|---|---|---|",
              f"| {pool['calls']} | {pool['succeeded']} | {pool['by_pool']} | {pool['spilled']} | "
              f"{pool['max_in_flight']} | {pool['wait_p50']} | {pool['wait_p99']} | {pool['rss']:.0f} | "
              f"{pool['kib_per_call']:.1f} | {pool['kib_peak']:.1f} |", "",
              f"Target: at most {POOL_CAP} in flight on the pool (the fake's own count), and at most 50 KiB of "
              f"upstream memory per call in flight or waiting: the RSS when the upstream held the most calls "
              f"({pool['held']}) less the RSS before the burst, over that count. The peak RSS comes later, when "
              f"the waiting calls spill to the instant model and their images are stored. For comparison, the "
              f"burst without a pool: {burst['kib_per_call']:.1f} KiB per generation in flight ({burst['held']} "
              f"held), each with its own HTTP/1.1 connection to the provider."]
    lines += ["", "### Tracing's cost (100 % sampling)", "",
              f"Two instant-model stacks running at once, tracing off and on (Envoy's OpenTelemetry tracer and the "
              f"upstream's OTLP exporter, every request sampled, into a local OTLP/gRPC receiver on the same "
              f"machine); saturated oha slices ({TRACE_SLICE}, 50 connections) alternate between them over "
              f"{TRACE_ROUNDS} shuffled rounds. Medians.", "",
              "| stack | calls/s | p50 ms | p99 ms |", "|---|---|---|---|"]
    for name in ("off", "on"):
        r = traced[name]
        lines.append(f"| tracing {name} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} |")
    lines += ["", f"Tracing on: {traced['on']['rps'] / traced['off']['rps']:.2f}× the throughput with tracing off "
                  f"(target ≥ 0.95; per round: {', '.join(f'{x:.2f}' for x in traced['ratios'])}); the receiver "
                  f"counted {traced['spans']} spans, {traced['spans'] / max(traced['calls'], 1):.1f} per traced call "
                  f"(Envoy's, the upstream's server span, its stages and the provider attempt)."]
    lines += credentials_section(credentials) + moderation_section(moderation)
    table = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results" / "stack.md"
    out.write_text("# make bench-stack\n\n" + table)
    print("\n" + table)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        if ON_TMPFS:
            shutil.rmtree(STATE, ignore_errors=True)  # memory, not disk
