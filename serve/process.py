"""The server on a loopback port, started, waited for and stopped: one helper for every caller.

- :class:`ServerProcess` / :func:`running_server`: ``python -m serve`` as a child process (the
  evaluation stage, the serving benchmark's throughput runs, the load tests). It runs in its own
  process group, so stopping it also stops whatever it started (vLLM's engine processes), and in
  its own interpreter, so clients never share its GIL. Its output goes to a log file; a server
  that exits or stays unhealthy is reported with that log's last lines.
- :class:`InProcessServer`: an app built in this process, served by uvicorn on a thread (tests that
  wrap the core, the benchmark that times the core beside the HTTP path).

Importing this module imports only the standard library (uvicorn is imported when used).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Flags whose value must not reach a log.
SECRET_FLAGS = ("--api-key",)


class ServerStartError(RuntimeError):
    """The server exited, or was not healthy in time; the message ends with its log's last lines."""


def free_loopback_port() -> int:
    """A TCP port free on the loopback interface now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, for an error message."""
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def serve_command(port: int, flags: Sequence[str], python: str = sys.executable) -> list[str]:
    """``python -m serve`` on ``LOOPBACK:port`` with the given flags."""
    return [python, "-m", "serve", "--host", LOOPBACK, "--port", str(port), *flags]


def shown_command(cmd: Sequence[str]) -> str:
    """The command line as it may be logged: secret values replaced by ``***``."""
    shown = list(cmd)
    for i, arg in enumerate(shown[:-1]):
        if arg in SECRET_FLAGS:
            shown[i + 1] = "***"
    return " ".join(shown)


class ServerProcess:
    """One server process: ``cmd`` must answer 200 on ``GET health_path`` (``/health``) on
    ``LOOPBACK:port`` once ready.

    ``cmd`` is the whole command line (usually :func:`serve_command`), so a test can start a
    stand-in. Use :func:`running_server`, or :meth:`start` and :meth:`stop` in a ``try``/``finally``.
    """

    def __init__(self, cmd: Sequence[str], port: int, log_path: Path, *, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None, health_path: str = "/health") -> None:
        self.cmd = list(cmd)
        self.health_path = health_path
        self.port = port
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the server's root (``/health``, ``/metrics``, ``/v1``)."""
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout_s: float) -> ServerProcess:
        """Start the process and wait until ``/health`` answers 200; on failure stop it and raise."""
        log.info("starting server: %s", shown_command(self.cmd))
        started = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log_fh:
            self.proc = subprocess.Popen(self.cmd, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=self.cwd, start_new_session=True)
        try:
            self._wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info("server healthy on port %d after %.1f s (log: %s)", self.port, time.monotonic() - started,
                 self.log_path)
        return self

    def _wait_healthy(self, timeout_s: float) -> None:
        assert self.proc is not None
        url = self.base_url + self.health_path
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"the server exited with code {self.proc.returncode} before becoming healthy; "
                                       f"last lines of {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.2)
        raise ServerStartError(f"the server was not healthy at {url} after {timeout_s:.0f} s; last lines of "
                               f"{self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the whole process group; SIGKILL it if it has not exited after ``grace_s``."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.warning("server did not stop within %.0f s; killing it", grace_s)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        log.info("server stopped")


@contextmanager
def running_server(cmd: Sequence[str], port: int, log_path: Path, timeout_s: float, *,
                   env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                   grace_s: float = 20.0) -> Iterator[ServerProcess]:
    """A started, healthy :class:`ServerProcess`, stopped on leaving (errors and Ctrl-C included)."""
    server = ServerProcess(cmd, port, log_path, env=env, cwd=cwd)
    server.start(timeout_s)
    try:
        yield server
    finally:
        server.stop(grace_s)


class InProcessServer:
    """``app`` (an ASGI app, e.g. ``serve.app.create_app(...)``) served by uvicorn on a thread."""

    def __init__(self, app: Any, startup_timeout_s: float = 60) -> None:
        import uvicorn

        self.port = free_loopback_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + startup_timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.stop()
                raise ServerStartError(f"the in-process server did not start within {startup_timeout_s:.0f} s")
            time.sleep(0.05)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def stop(self, timeout_s: float = 30) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout_s)
