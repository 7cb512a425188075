"""A model folder as GGUF, and the environment that serves it (``--backend llamacpp``).

Shared by the evaluate stage (``evaluate.server.backend: llamacpp``: the model is converted to a
GGUF of ``evaluate.server.gguf_type`` for the run) and the ``export_gguf`` stage. Both need the
llama.cpp build of ``make llamacpp-venv``: ``scripts/export_gguf.sh`` converts with its
``convert_hf_to_gguf.py`` (and ``llama-quantize`` for quantized types), and the server imports
``llama_cpp`` from its site-packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stages.config import ConfigError

SCRIPT = Path("scripts/export_gguf.sh")


def export(model_dir: str, out: Path, gguf_type: str, llamacpp_venv: str, threads: int | None = None) -> None:
    """Write ``model_dir`` as a ``gguf_type`` GGUF file at ``out``."""
    env = {**os.environ, "LLAMACPP_VENV": llamacpp_venv, "PY": sys.executable}
    if threads:
        env["THREADS"] = str(threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["bash", str(SCRIPT), model_dir, str(out), gguf_type], env=env, capture_output=True,
                            text=True, check=False)
    if result.returncode != 0 or not out.is_file():
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise ConfigError(f"exporting {model_dir} as {gguf_type} failed (exit {result.returncode}):\n{tail}")


def llamacpp_site(venv: str) -> str:
    """The site-packages of the llama.cpp venv: the server imports llama_cpp from there."""
    python = Path(venv) / "bin" / "python"
    if not python.is_file():
        raise ConfigError(f"no llama.cpp build at {venv}: run `make llamacpp-venv` (about 8 minutes) first")
    found = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=False)
    if found.returncode != 0:
        raise ConfigError(f"the llama.cpp venv's python at {python} does not run ({found.stderr.strip()[-300:]}): "
                          "rebuild it with `make llamacpp-venv`")
    return found.stdout.strip()


def llamacpp_env(venv: str) -> dict[str, str]:
    """This process's environment with the llama.cpp venv's bindings importable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (llamacpp_site(venv), os.environ.get("PYTHONPATH")) if p)}
