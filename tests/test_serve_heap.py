"""The server process freezes what it loaded at start-up out of the cyclic garbage collector's
passes (serve.app.freeze_heap); an app made with the default leaves the collector alone.

Each case runs in a fresh interpreter: freezing is process-wide and would otherwise reach into
this test run."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import gc, json, sys
from types import SimpleNamespace
from concurrent.futures import ThreadPoolExecutor
from fastapi.testclient import TestClient
from serve.app import create_app

loaded = [{"layer": i, "weights": [float(i)] * 4} for i in range(20000)]  # stands in for a model's objects
core = SimpleNamespace(config=SimpleNamespace(model_name="m", aliases=(), max_request_bytes=0, api_key=None),
                       fmt=SimpleNamespace(name="f"), engine=SimpleNamespace(name="e"),
                       executor=ThreadPoolExecutor(1), backend=SimpleNamespace())
app = create_app(lambda: core, freeze=sys.argv[1] == "freeze")
before = gc.get_freeze_count()
with TestClient(app) as client:
    health = client.get("/health").status_code
    during = gc.get_freeze_count()
    garbage = []
    garbage.append(garbage)  # a cycle made after start-up
    del garbage
    collected = gc.collect()
print(json.dumps({"before": before, "during": during, "health": health, "collected": collected}))
"""


def _run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_server_freezes_its_start_up_heap_and_still_collects_new_cycles() -> None:
    frozen = _run("freeze")
    assert frozen["before"] == 0
    assert frozen["during"] > 20000  # the loaded objects, and what the imports made
    assert frozen["health"] == 200
    assert frozen["collected"] >= 1  # a cycle made after start-up is still found


def test_an_app_made_without_freeze_leaves_the_collector_alone() -> None:
    plain = _run("plain")
    assert plain["before"] == plain["during"] == 0
    assert plain["health"] == 200
