"""The project's server for one model, as bfcl's evaluation needs it (``serve.process`` runs it)."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from serve.process import ServerStartError, serve_command
from serve.process import running_server as running_server_process
from stages.evaluation import EvalError
from stages.evaluation.config import ModelEntry, ServerSettings

log = logging.getLogger(__name__)

# Server counters worth a line in the stage's log (the whole scrape is kept beside bfcl's results).
_SERVER_COUNTERS = ("octupus_prompt_tokens_total", "octupus_prefilled_tokens_total",
                    "octupus_prefix_cache_reused_tokens_total", "octupus_completion_tokens_total",
                    "octupus_engine_prefill_seconds_total", "octupus_engine_decode_seconds_total",
                    "octupus_engine_decode_steps_total", "octupus_engine_decode_rows_total",
                    "octupus_engine_forced_tokens_total")


def server_command(entry: ModelEntry, server: ServerSettings, port: int, served_name: str,
                   api_key: str) -> list[str]:
    flags = ["--model", entry.path, "--format", entry.format, "--backend", server.backend, "--engine", server.engine,
             "--served-model-name", served_name, "--api-key", api_key,
             "--default-max-tokens", str(server.max_output_tokens)]
    if server.max_text_tokens:
        flags += ["--default-max-text-tokens", str(server.max_text_tokens)]
    if server.max_context is not None:
        flags += ["--max-context", str(server.max_context)]
    if server.threads is not None:
        flags += ["--threads", str(server.threads)]
    if server.backend in ("transformers", "llamacpp"):
        if server.max_batch > 1:
            flags += ["--max-batch", str(server.max_batch)]
        flags += ["--prefix-cache-mb", f"{server.prefix_cache_mb:g}"]
    return serve_command(port, flags + list(server.extra_args))


@contextmanager
def running_server(cmd: list[str], port: int, timeout_s: float, log_path: Path,
                   env: Mapping[str, str] | None = None) -> Iterator[str]:
    """The server started and healthy; yields its ``/v1`` base URL; always stops it."""
    try:
        with running_server_process(cmd, port, log_path, timeout_s, env=env) as server:
            yield server.base_url + "/v1"
    except ServerStartError as exc:
        raise EvalError(str(exc)) from exc


def save_server_metrics(url: str, path: Path) -> dict[str, float]:
    """Keep the server's Prometheus scrape (token counts, prefix-cache reuse, latencies, forward-pass
    time); returns the counters worth a line in the log and in the stage's metrics."""
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            text = resp.read().decode("utf-8")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        log.warning("could not read the server's metrics at %s: %s", url, exc)
        return {}
    path.write_text(text, encoding="utf-8")
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in _SERVER_COUNTERS:
            number = float(value)
            values[name.removeprefix("octupus_").removesuffix("_total")] = (round(number, 1) if "seconds" in name
                                                                             else int(number))
    log.info("server counters: %s", json.dumps(values))
    return values
