#!/usr/bin/env python3
"""make soak: the whole stack under steady mixed traffic while faults are injected.

Real processes on loopback: Envoy 1.40 with the filter (2 workers, global
rate limit on), two upstream replicas sharing one image store, Redis and
mcp-ratelimit, and the OpenAI fake at 2 s per generation. Several identities
(three JWT users in two orgs, one API key) send a steady mix of generate_image,
edit_image (in-painting the identity's last image by region), list_models and
generate_image-as-a-task calls (2026-07-28, polled with tasks/get). On a schedule spread over SOAK_SECONDS (default 600) the script
injects, one at a time:

  provider 500s      the fake answers server_error for 10 s
  provider 429s      rate_limit_exceeded with retry-after for 10 s
  provider timeout   the fake hangs for 10 s (the upstream's 8 s timeout fires)
  Redis restart      Redis killed, restarted on its port 3 s later
  replica SIGKILL    upstream-2 killed, restarted 3 s later
  Envoy hot restart  a new Envoy epoch takes over; the old one drains

Every failed call is classed; a failure that starts or ends within a fault's
window (the fault plus 20 s to settle: model latency, timeouts, task leases)
is explained by it, any other is unexplained (target 0). It also checks
billing events against delivered images (audit events of successful calls,
which must agree one for one), and RSS and open file descriptors of the
never-killed replica and of Envoy at a quiet moment after warm-up and at the
end (the Envoy baseline is re-taken after its hot restart). Writes
bench/results/soak.md. Not part of `make test`.
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import free_port, wait_port, wait_http, stop, rss_mib, open_fds, percentile  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STATE = ROOT / ".state" / "soak"
DEBUG = ROOT / "target" / "debug"
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "mcp_edge_filter.wasm"
SECONDS = int(os.environ.get("SOAK_SECONDS", "600"))
WORKERS = int(os.environ.get("SOAK_WORKERS", "8"))
MODEL_LATENCY_MS = int(os.environ.get("SOAK_MODEL_LATENCY_MS", "2000"))
SETTLE = 20.0
WARMUP = min(30.0, SECONDS / 10)
















class Stack:
    """Redis, mcp-ratelimit, the fake, two upstreams and Envoy; close() stops all."""

    def __init__(self, envoy: str):
        self.envoy_bin = envoy
        self.dir = STATE
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = str(DEBUG / "mcp-image-gateway")
        self.children = {}
        self.redis_port, self.grpc_port = free_port(), free_port()
        self.start_redis()
        limits = [
            {"name": "org-daily-images", "namespace": "mcp-gateway", "max_value": 10_000_000, "seconds": 86400,
             "conditions": [], "variables": ["descriptors[0].org"]},
        ]
        (self.dir / "limits.json").write_text(json.dumps(limits))
        self.spawn("ratelimit", [str(DEBUG / "mcp-ratelimit"), "--listen", f"127.0.0.1:{self.grpc_port}",
                                 "--limits", str(self.dir / "limits.json"),
                                 "--redis-url", f"redis://127.0.0.1:{self.redis_port}"])
        wait_port(self.grpc_port)
        fake = subprocess.Popen([str(DEBUG / "fake-openai"), "--latency-ms", str(MODEL_LATENCY_MS)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.children["fake"] = fake
        self.fake = json.loads(fake.stdout.readline())
        listen, self.admin_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{listen}"
        subprocess.run([self.binary, "dev-init", "--state-dir", str(self.dir)], check=True, capture_output=True)
        self.upstream_ports = {"upstream-1": (free_port(), free_port()), "upstream-2": (free_port(), free_port())}
        for name in self.upstream_ports:
            self.start_upstream(name)
        filter_config = json.loads(subprocess.run(
            [self.binary, "filter-config", "--state-dir", str(self.dir), "--public-base-url", self.base_url],
            capture_output=True, text=True, check=True).stdout)
        filter_config["rate_limits"] = {
            "per_caller": {"requests_per_second": 1000, "burst": 10_000},
            "per_org": {"requests_per_second": 1000, "burst": 10_000},
            "daily_images_per_org": 10_000_000,
        }
        filter_config["global_rate_limit"] = {"cluster": "mcp_ratelimit", "timeout_ms": 200, "failure_mode": "allow"}
        self.api_key = (self.dir / "dev-api-key").read_text().strip()
        (self.dir / "filter.json").write_text(json.dumps(filter_config))
        (self.dir / "clusters.yaml").write_text(
            "  - name: mcp_ratelimit\n    type: STATIC\n    connect_timeout: 1s\n"
            "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
            "        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n"
            "        explicit_http_config: { http2_protocol_options: {} }\n"
            "    load_assignment:\n      cluster_name: mcp_ratelimit\n      endpoints:\n      - lb_endpoints:\n"
            f"        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {self.grpc_port} }} }} }}\n")
        second = self.upstream_ports["upstream-2"][0]
        (self.dir / "endpoints.yaml").write_text(
            f"        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {second} }} }} }}\n")
        self.envoy_config = self.dir / "envoy.yaml"
        subprocess.run([self.binary, "render-envoy", "--template", str(ROOT / "envoy/envoy.yaml.tmpl"),
                        "--out", str(self.envoy_config), "--state-dir", str(self.dir),
                        "--set", f"LISTEN_PORT={listen}", "--set", f"ADMIN_PORT={self.admin_port}",
                        "--set", f"UPSTREAM_PORT={self.upstream_ports['upstream-1'][0]}", "--set", f"WASM_PATH={WASM}",
                        "--set-file", f"FILTER_CONFIG={self.dir / 'filter.json'}",
                        "--set-file", f"EXTRA_CLUSTERS={self.dir / 'clusters.yaml'}",
                        "--set-file", f"EXTRA_UPSTREAM_ENDPOINTS={self.dir / 'endpoints.yaml'}"],
                       check=True, capture_output=True)
        self.epoch = 0
        self.start_envoy()
        for name, (port, _) in self.upstream_ports.items():
            wait_http(f"http://127.0.0.1:{port}/healthz")
        wait_http(f"http://127.0.0.1:{self.admin_port}/ready")
        self.tokens = {}
        for sub, org in [("alice", "acme"), ("bob", "acme"), ("carol", "globex")]:
            self.tokens[f"{sub}@{org}"] = subprocess.run(
                [self.binary, "token", "--sub", sub, "--org", org, "--state-dir", str(self.dir),
                 "--public-base-url", self.base_url], capture_output=True, text=True, check=True).stdout.strip()

    def spawn(self, name: str, argv: list, env=None) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "a")
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.children[name] = process
        return process

    def start_redis(self) -> None:
        self.spawn("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port),
                             "--save", "", "--appendonly", "no"])
        wait_port(self.redis_port)

    def start_upstream(self, name: str) -> None:
        port, metrics = self.upstream_ports[name]
        env = dict(os.environ, RUST_LOG="info,rmcp=warn", GATEWAY_BACKEND="openai",
                   OPENAI_API_KEY=self.fake["api_key"], OPENAI_BASE_URL=f"{self.fake['base_url']}/v1",
                   OPENAI_TIMEOUT_SECS="8", GATEWAY_TASK_LEASE_SECS="6",
                   GATEWAY_LISTEN=f"127.0.0.1:{port}", GATEWAY_METRICS_LISTEN=f"127.0.0.1:{metrics}",
                   GATEWAY_PUBLIC_BASE_URL=self.base_url, GATEWAY_STATE_DIR=str(self.dir),
                   GATEWAY_DRAIN_DELAY_SECS="0")
        self.spawn(name, [self.binary, "serve"], env)

    def start_envoy(self) -> None:
        argv = [self.envoy_bin, "-c", str(self.envoy_config), "--concurrency", "2", "--log-level", "error",
                "--drain-time-s", "5", "--parent-shutdown-time-s", "15"]
        if self.epoch == 0:
            argv += ["--use-dynamic-base-id", "--base-id-path", str(self.dir / "base-id")]
        else:
            argv += ["--base-id", (self.dir / "base-id").read_text().strip(), "--restart-epoch", str(self.epoch)]
        self.spawn(f"envoy-{self.epoch}", argv)

    def envoy_pid(self) -> int:
        return self.children[f"envoy-{self.epoch}"].pid

    def fault(self, kind: str, seconds: int) -> None:
        request = urllib.request.Request(f"{self.fake['base_url']}/_fake/fault", method="POST",
                                         data=json.dumps({"kind": kind, "seconds": seconds}).encode(),
                                         headers={"content-type": "application/json"})
        urllib.request.urlopen(request, timeout=5).read()

    def events(self, target: str) -> list:
        out = []
        for name in self.upstream_ports:
            for line in (self.dir / f"{name}.log").read_text().splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("target") == target:
                    out.append(event.get("fields", {}))
        return out

    def close(self) -> None:
        for name, process in reversed(list(self.children.items())):
            stop(process, signal.SIGINT if name == "fake" else signal.SIGTERM)


class Traffic:
    """Worker threads sending the call mix; every call is recorded."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.records = []
        self.lock = threading.Lock()
        self.running = True
        self.paused = threading.Event()
        self.next_id = 0
        # The last image each identity made, for edits to start from.
        self.last_image = {}

    def request_id(self) -> int:
        with self.lock:
            self.next_id += 1
            return self.next_id

    def post(self, headers: dict, body: dict, timeout: float = 60):
        request = urllib.request.Request(f"{self.stack.base_url}/mcp", method="POST", data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json",
                                                  "accept": "application/json, text/event-stream", **headers})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            try:
                return error.code, json.loads(error.read() or b"null")
            except ValueError:
                return error.code, None

    def identity(self, rng: random.Random) -> tuple:
        who = rng.choice(list(self.stack.tokens) + ["api-key"])
        if who == "api-key":
            return who, {"x-api-key": self.stack.api_key}
        return who, {"authorization": f"Bearer {self.stack.tokens[who]}"}

    def credentials(self, rng: random.Random) -> dict:
        return self.identity(rng)[1]

    def generate(self, rng: random.Random) -> tuple:
        who, credentials = self.identity(rng)
        headers = {"mcp-protocol-version": "2025-11-25", **credentials}
        body = {"jsonrpc": "2.0", "id": self.request_id(), "method": "tools/call",
                "params": {"name": "generate_image", "arguments": {"prompt": f"a soak test kite {rng.random()}"}}}
        status, reply = self.post(headers, body)
        outcome = classify(status, reply)
        if outcome[0] == "ok":
            with self.lock:
                self.last_image[who] = reply["result"]["structuredContent"]["image_urls"][0]
        return outcome

    def edit(self, rng: random.Random) -> tuple:
        who, credentials = self.identity(rng)
        with self.lock:
            image = self.last_image.get(who)
        if image is None:
            return self.generate(rng)
        headers = {"mcp-protocol-version": "2025-11-25", **credentials}
        region = {"x": 0, "y": 0, "width": 256, "height": 256}
        body = {"jsonrpc": "2.0", "id": self.request_id(), "method": "tools/call",
                "params": {"name": "edit_image", "arguments": {"prompt": "add a kite", "images": [image],
                                                               "mask_region": region}}}
        status, reply = self.post(headers, body)
        return classify(status, reply)

    def list_models(self, rng: random.Random) -> tuple:
        headers = {"mcp-protocol-version": "2025-06-18", **self.credentials(rng)}
        status, reply = self.post(headers, {"jsonrpc": "2.0", "id": self.request_id(), "method": "tools/call",
                                            "params": {"name": "list_models", "arguments": {}}})
        return classify(status, reply)

    def task(self, rng: random.Random) -> tuple:
        credentials = self.credentials(rng)
        meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}},
                "io.modelcontextprotocol/clientInfo": {"name": "soak", "version": "1"}}
        headers = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "generate_image",
                   **credentials}
        body = {"jsonrpc": "2.0", "id": self.request_id(), "method": "tools/call",
                "params": {"name": "generate_image", "arguments": {"prompt": f"a soak task {rng.random()}"},
                           "_meta": meta}}
        status, reply = self.post(headers, body)
        task_id = ((reply or {}).get("result") or {}).get("taskId")
        if status != 200 or not task_id:
            outcome = classify(status, reply)
            return outcome if outcome[0] != "ok" else ("not_a_task", str(reply)[:120], 0)
        deadline = time.time() + 60
        while time.time() < deadline:
            time.sleep(1)
            poll_headers = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tasks/get", "mcp-name": task_id,
                            **credentials}
            status, reply = self.post(poll_headers, {"jsonrpc": "2.0", "id": self.request_id(), "method": "tasks/get",
                                                     "params": {"taskId": task_id, "_meta": meta}})
            if status != 200:
                continue  # a poll may meet a dying replica; the task itself is what counts
            result = (reply or {}).get("result") or {}
            state = result.get("status")
            if state == "completed":
                return classify(200, {"result": result.get("result")})
            if state in ("failed", "cancelled"):
                return ("task_" + state, str(result.get("statusMessage", ""))[:120], 0)
        return ("task_stuck", task_id, 0)

    def worker(self, seed: int) -> None:
        rng = random.Random(seed)
        ops = [("generate", self.generate, 4), ("edit", self.edit, 2), ("list_models", self.list_models, 2),
               ("task", self.task, 2)]
        while self.running:
            if self.paused.is_set():
                time.sleep(0.2)
                continue
            name, op, _ = rng.choices(ops, weights=[w for _, _, w in ops])[0]
            started = time.time()
            try:
                outcome, detail, images = op(rng)
            except Exception as error:  # connection refused or reset during a fault
                outcome, detail, images = "transport_error", type(error).__name__ + ": " + str(error)[:100], 0
            ended = time.time()
            with self.lock:
                self.records.append({"op": name, "start": started, "end": ended, "outcome": outcome,
                                     "detail": detail, "images": images})
            time.sleep(rng.uniform(0.1, 0.5))


def classify(status: int, reply) -> tuple:
    """(outcome, detail, images delivered)."""
    if status != 200 or not isinstance(reply, dict):
        message = ((reply or {}).get("error") or {}).get("message", "") if isinstance(reply, dict) else ""
        return (f"http_{status}", message[:120], 0)
    if "error" in reply:
        return ("jsonrpc_error", str(reply["error"].get("message", ""))[:120], 0)
    result = reply.get("result") or {}
    if result.get("isError"):
        text = " ".join(c.get("text", "") for c in result.get("content", []))
        return ("tool_error", text[:120], 0)
    images = len((result.get("structuredContent") or {}).get("image_urls", []))
    return ("ok", "", images)


def measure(stack: Stack, traffic: Traffic, label: str) -> dict:
    """RSS and fds of upstream-1 and Envoy with traffic paused (in-flight calls finish)."""
    traffic.paused.set()
    time.sleep(12)
    upstream, envoy = stack.children["upstream-1"].pid, stack.envoy_pid()
    sample = {
        "label": label,
        "envoy_pid": envoy,
        "upstream_rss": rss_mib(upstream),
        "upstream_fds": open_fds(upstream),
        "upstream_sockets": sockets(upstream),
        "envoy_rss": rss_mib(envoy),
        "envoy_fds": open_fds(envoy),
        "envoy_sockets": sockets(envoy),
    }
    traffic.paused.clear()
    print(json.dumps(sample), flush=True)
    return sample


def sockets(pid: int) -> int:
    """Open sockets (pooled connections come and go with load; files must not)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def main() -> int:
    envoy = subprocess.run([str(ROOT / "scripts" / "ensure-envoy.sh")], capture_output=True, text=True,
                           check=True).stdout.strip()
    if STATE.exists():
        subprocess.run(["rm", "-rf", str(STATE)], check=True)
    STATE.mkdir(parents=True)
    stack = Stack(envoy)
    traffic = Traffic(stack)
    windows = []
    samples = []
    try:
        threads = [threading.Thread(target=traffic.worker, args=(i,), daemon=True) for i in range(WORKERS)]
        began = time.time()
        for thread in threads:
            thread.start()
        time.sleep(WARMUP)
        samples.append(measure(stack, traffic, "start (after warm-up)"))

        def fault_provider(kind: str) -> None:
            stack.fault(kind, 10)
            time.sleep(10)

        def restart_redis() -> None:
            stop(stack.children["redis"], signal.SIGKILL)
            time.sleep(3)
            stack.start_redis()

        def kill_replica() -> None:
            stop(stack.children["upstream-2"], signal.SIGKILL)
            time.sleep(3)
            stack.start_upstream("upstream-2")
            wait_http(f"http://127.0.0.1:{stack.upstream_ports['upstream-2'][0]}/healthz")

        def hot_restart_envoy() -> None:
            stack.epoch += 1
            stack.start_envoy()
            time.sleep(3)

        schedule = [
            ("provider 500s (10 s)", lambda: fault_provider("server_error")),
            ("provider 429s (10 s)", lambda: fault_provider("rate_limited")),
            ("provider timeout (hangs 10 s)", lambda: fault_provider("hang")),
            ("Redis restart", restart_redis),
            ("upstream-2 SIGKILL + restart", kill_replica),
            ("Envoy hot restart", hot_restart_envoy),
        ]
        usable = SECONDS - WARMUP - 40
        gap = usable / (len(schedule) + 1)
        for index, (name, inject) in enumerate(schedule):
            target = began + WARMUP + 15 + gap * (index + 1)
            time.sleep(max(0.0, target - time.time()))
            start = time.time()
            print(f"{start - began:6.0f} s  fault: {name}", flush=True)
            inject()
            windows.append((name, start, time.time() + SETTLE))
            if name == "Envoy hot restart":
                time.sleep(20)  # the old epoch has drained and exited
                samples.append(measure(stack, traffic, "after the Envoy hot restart"))
        time.sleep(max(0.0, began + SECONDS - time.time()))
        traffic.running = False
        for thread in threads:
            thread.join(timeout=90)
        samples.append(measure(stack, traffic, "end"))
        ended = time.time()
        billing = stack.events("billing")
        audit = stack.events("audit")
    finally:
        traffic.running = False
        stack.close()

    records = traffic.records
    outcomes = {}
    unexplained = []
    for r in records:
        key = (r["op"], r["outcome"])
        outcomes[key] = outcomes.get(key, 0) + 1
        if r["outcome"] == "ok":
            continue
        cause = next((name for name, start, end in windows if r["start"] <= end and r["end"] >= start), None)
        r["cause"] = cause
        if cause is None:
            unexplained.append(r)
    delivered_server = sum(int(e.get("images_stored") or 0) for e in audit
                           if e.get("event") == "tool_call" and e.get("outcome") == "Success")
    billed_images = sum(int(e.get("images") or 0) for e in billing)
    billed_calls = {e.get("request_id") for e in billing}
    success_calls = {e.get("request_id") for e in audit if e.get("event") == "tool_call" and e.get("outcome") == "Success"}
    delivered_client = sum(r["images"] for r in records)

    lines = [
        f"Envoy 1.40 (2 workers) with the filter and the global rate limit, two upstream replicas (debug builds), "
        f"Redis + mcp-ratelimit, the OpenAI fake at {MODEL_LATENCY_MS / 1000:.0f} s per image; {WORKERS} clients "
        f"(three JWT users in two orgs and an API key) for {SECONDS} s: generate_image and edit_image (in-painting the "
        f"caller's last image by region; 2025-11-25), list_models (2025-06-18) and generate_image as a task "
        f"(2026-07-28, polled). One 2-core machine.",
        "",
        "## Faults injected",
        "",
        "| at s | fault |",
        "|---|---|",
    ]
    lines += [f"| {start - began:.0f} | {name} |" for name, start, _ in windows]
    lines += ["", "## Calls by outcome", "", "| call | outcome | count | explained by |", "|---|---|---|---|"]
    for (op, outcome), count in sorted(outcomes.items()):
        causes = sorted({r.get("cause") or "—" for r in records if r["op"] == op and r["outcome"] == outcome})
        lines.append(f"| {op} | {outcome} | {count} | {', '.join(causes) if outcome != 'ok' else ''} |")
    lines += ["", f"Calls: {len(records)}. Failures not explained by an injected fault: **{len(unexplained)}** (target 0)."]
    for r in unexplained[:20]:
        lines.append(f"- {r['op']} at {r['start'] - began:.0f} s: {r['outcome']} {r['detail']}")
    lines += [
        "",
        "## Billing against delivery",
        "",
        "| | count |",
        "|---|---|",
        f"| successful calls (audit) | {len(success_calls)} |",
        f"| billing events | {len(billing)} |",
        f"| images delivered (audit) | {delivered_server} |",
        f"| images billed | {billed_images} |",
        f"| successful calls without a billing event | {len(success_calls - billed_calls)} |",
        f"| billing events without a successful call | {len(billed_calls - success_calls)} |",
        f"| images received by clients | {delivered_client} |",
        "",
        "Clients can receive fewer images than were delivered: a call whose replica or Envoy died after "
        "storing the image never answered (its image is billed and stored, as it was generated).",
        "",
        "## Resources (traffic paused, in-flight calls finished)",
        "",
        "| when | upstream-1 RSS MiB | upstream-1 fds (sockets) | Envoy RSS MiB | Envoy fds (sockets) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {s['label']} | {s['upstream_rss']:.1f} | {s['upstream_fds']} ({s['upstream_sockets']}) | "
              f"{s['envoy_rss']:.1f} (pid {s['envoy_pid']}) | {s['envoy_fds']} ({s['envoy_sockets']}) |" for s in samples]
    first, envoy_base, last = samples[0], samples[-2] if len(samples) > 2 else samples[0], samples[-1]
    up_growth = (last["upstream_rss"] - first["upstream_rss"]) / first["upstream_rss"] * 100
    envoy_growth = (last["envoy_rss"] - envoy_base["envoy_rss"]) / envoy_base["envoy_rss"] * 100
    files = lambda s, who: s[f"{who}_fds"] - s[f"{who}_sockets"]  # noqa: E731
    lines += ["", f"Growth from start to end: upstream-1 RSS {up_growth:+.1f} % (target < 10 %), descriptors other "
                  f"than sockets {files(last, 'upstream') - files(first, 'upstream'):+d} (target 0), sockets "
                  f"{last['upstream_sockets'] - first['upstream_sockets']:+d}; Envoy (since its hot restart) RSS "
                  f"{envoy_growth:+.1f} %, descriptors other than sockets "
                  f"{files(last, 'envoy') - files(envoy_base, 'envoy'):+d}, sockets "
                  f"{last['envoy_sockets'] - envoy_base['envoy_sockets']:+d}. Sockets are pooled keep-alive "
                  f"connections (to the provider, between Envoy and the replicas) and follow the peak concurrency "
                  f"of the last minute or two; a leak shows as descriptors other than sockets, or as RSS that keeps "
                  f"climbing between the last two samples."]
    lines += ["", "## Latency per minute (all calls, client side)", "", "| minute | calls | p50 ms | p99 ms |",
              "|---|---|---|---|"]
    minutes = {}
    for r in records:
        minutes.setdefault(int((r["start"] - began) // 60), []).append((r["end"] - r["start"]) * 1000)
    for minute, values in sorted(minutes.items()):
        lines.append(f"| {minute} | {len(values)} | {percentile(values, 50):.0f} | {percentile(values, 99):.0f} |")
    text = "# make soak\n\n" + "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results" / "soak.md"
    out.write_text(text)
    print(text)
    ok = not unexplained and billed_calls == success_calls and billed_images == delivered_server
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
