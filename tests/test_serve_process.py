"""serve/process.py: start a server process, wait until healthy, report failures with its log, stop it.

Stand-in servers (the standard library's http.server answers GET /health for an existing file)
keep these fast; the real `python -m serve` goes through the same code in test_serve_load.py,
test_evaluate.py and the smoke pipeline.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from serve.process import (
    InProcessServer,
    ServerProcess,
    ServerStartError,
    free_loopback_port,
    running_server,
    serve_command,
    shown_command,
)


def stand_in(directory: Path, port: int) -> list[str]:
    (directory / "health").write_text("ok")
    return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(directory)]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def test_running_server_is_healthy_inside_and_gone_after(tmp_path: Path) -> None:
    port = free_loopback_port()
    with running_server(stand_in(tmp_path, port), port, tmp_path / "server.log", timeout_s=30) as server:
        assert server.base_url == f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(server.base_url + "/health", timeout=5) as resp:
            assert resp.status == 200
        pid = server.proc.pid
    assert server.proc.poll() is not None and refused(port)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group is gone
    assert "GET /health" in (tmp_path / "server.log").read_text()


def test_stop_reaches_what_the_server_started(tmp_path: Path) -> None:
    # A server that starts a child of its own (as vLLM starts engine processes), then serves.
    port = free_loopback_port()
    (tmp_path / "health").write_text("ok")
    script = ("import subprocess, sys, http.server, functools\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
              "print(child.pid, flush=True)\n"
              f"handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory={str(tmp_path)!r})\n"
              f"http.server.ThreadingHTTPServer(('127.0.0.1', {port}), handler).serve_forever()\n")
    server = ServerProcess([sys.executable, "-c", script], port, tmp_path / "server.log").start(30)
    child = int((tmp_path / "server.log").read_text().split()[0])
    server.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, 9)
        pytest.fail("the server's child outlived stop()")


def test_a_server_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; print('cannot load model xyz'); sys.exit(3)"]
    with pytest.raises(ServerStartError, match=r"exited with code 3[\s\S]*cannot load model xyz"):
        with running_server(cmd, free_loopback_port(), tmp_path / "server.log", timeout_s=30):
            pytest.fail("the body must not run")


def test_a_server_never_healthy_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    port = free_loopback_port()
    cmd = [sys.executable, "-c", "import time; print('still loading', flush=True); time.sleep(600)"]
    server = ServerProcess(cmd, port, tmp_path / "server.log")
    with pytest.raises(ServerStartError, match=r"not healthy at http://127.0.0.1:\d+/health after 1 s[\s\S]*still"):
        server.start(timeout_s=1)
    assert server.proc is not None and server.proc.poll() is not None


def test_serve_command_and_secrets_kept_out_of_logs() -> None:
    cmd = serve_command(8123, ["--model", "m", "--api-key", "s3cret"])
    assert cmd == [sys.executable, "-m", "serve", "--host", "127.0.0.1", "--port", "8123", "--model", "m",
                   "--api-key", "s3cret"]
    assert "s3cret" not in shown_command(cmd) and "--api-key ***" in shown_command(cmd)


def test_in_process_server_serves_an_app_and_stops() -> None:
    async def app(scope, receive, send):  # the smallest ASGI app
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    server = InProcessServer(app)
    try:
        with urllib.request.urlopen(server.base_url + "/health", timeout=5) as resp:
            assert resp.read() == b"ok"
    finally:
        server.stop()
    assert not server.thread.is_alive() and refused(server.port)
