"""Prometheus metrics of the manager (served at /metrics by the HTTP layer)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CREATED = Counter("corral_sandboxes_created_total", "Sandboxes created")
ENDED = Counter("corral_sandboxes_ended_total", "Sandboxes that ended, by final state", ["state"])
RUNNING = Gauge("corral_sandboxes_running", "Sandboxes running now")
CREATE_SECONDS = Histogram(
    "corral_sandbox_create_seconds", "Time to create a sandbox",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
COMMANDS = Counter("corral_commands_total", "Commands started")
CODE_RUNS = Counter("corral_code_runs_total", "Code interpreter cells run")
