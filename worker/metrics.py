"""Each worker's /metrics (Prometheus text): the platform's own numbers (prometheus_client)
followed by the Temporal SDK's worker metrics, which include what the notebook workflows
count (workflows/notebook/metrics.py). The SDK serves its metrics on a loopback port of its
own; this server reads them from there, so an operator scrapes one address per process.

Off unless ``metrics_address`` is set; bind it where only the monitoring network reaches
(notebook containers have no network, so a loopback or management address is safe)."""

from __future__ import annotations

import logging
import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

log = logging.getLogger("ainb.metrics")

# (The SDK prefixes its own metrics with temporal_, not those the workflows define.)
# Time to RUNNING and its phases span seconds to minutes: buckets for that, not the SDK's
# default millisecond ones.
_SECONDS_BUCKETS = [0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300, 600]


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MetricsServer:
    """Started before the Temporal client: the SDK's runtime must exist to be passed in."""

    def __init__(self, address: str) -> None:
        self.address = split_address(address)
        sdk_port = _free_loopback_port()
        self._sdk_url = f"http://127.0.0.1:{sdk_port}/metrics"
        self.runtime = Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(
                    bind_address=f"127.0.0.1:{sdk_port}",
                    durations_as_seconds=True,
                    histogram_bucket_overrides={
                        "ainb_time_to_running_seconds": _SECONDS_BUCKETS,
                        "ainb_start_phase_seconds": _SECONDS_BUCKETS,
                    },
                )
            )
        )
        self._http: ThreadingHTTPServer | None = None

    def _sdk_text(self) -> bytes:
        try:
            with urllib.request.urlopen(self._sdk_url, timeout=2) as r:
                return r.read()
        except OSError as err:
            return f"# the Temporal SDK's metrics did not answer: {err}\n".encode()

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = generate_latest(REGISTRY) + server._sdk_text()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # scrapes are not news
                pass

        self._http = ThreadingHTTPServer(self.address, Handler)
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="metrics", daemon=True).start()
        log.info("metrics on http://%s:%d/metrics", *self._http.server_address[:2])

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


def start_metrics(address: str | None) -> MetricsServer | None:
    if not address:
        return None
    server = MetricsServer(address)
    server.start()
    return server
