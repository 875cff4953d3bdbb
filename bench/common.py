"""Helpers the bench and soak scripts share: loopback ports, readiness,
stopping processes, and reading a process's memory and descriptors."""

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def stop(process: subprocess.Popen, sig=signal.SIGINT) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _status_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1))


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int = None) -> float:
    """CPU time (user and system) of process `pid` so far, or, without one,
    of the whole machine (all cores, idle excluded)."""
    hz = os.sysconf("SC_CLK_TCK")
    if pid is not None:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / hz
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / hz


def percentile(values: list, p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class SpanSink:
    """The OTLP/gRPC receiver process (tests/src/bin/otlp-receiver.rs) the
    tracing-on rows export to: counts spans, keeps none."""

    def __init__(self, binary: Path):
        import json
        self.process = subprocess.Popen([str(binary)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.endpoint = json.loads(self.process.stdout.readline())["endpoint"]
        self.port = int(self.endpoint.rsplit(":", 1)[1])

    def close(self) -> int:
        """Stops the receiver; how many spans it got."""
        import json
        stop(self.process)
        line = self.process.stdout.readline()
        return json.loads(line)["spans"] if line else 0


def collector_cluster(port: int) -> str:
    """An Envoy cluster `otel_collector` (HTTP/2, for OTLP/gRPC) on 127.0.0.1:port."""
    return ("  - name: otel_collector\n    type: STATIC\n    connect_timeout: 1s\n"
            "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
            "        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n"
            "        explicit_http_config: { http2_protocol_options: {} }\n"
            "    load_assignment:\n      cluster_name: otel_collector\n      endpoints:\n      - lb_endpoints:\n"
            f"        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n")
