"""`make serve` (dry run, `make -n`): which server command each BACKEND runs.

The default serves through the llamacpp backend (an f32 GGUF of MODEL, 8 requests decoded
together, after the llama.cpp build); `BACKEND=transformers` runs torch's forward passes without
that build or a conversion.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def dry_run(*variables: str) -> list[str]:
    done = subprocess.run(["make", "-n", "serve", "MODEL=models/stage2", *variables], cwd=REPO,
                          capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def serve_command(lines: list[str]) -> list[str]:
    found = [shlex.split(line) for line in lines if " -m serve " in line]
    assert len(found) == 1, lines
    words = found[0]
    return words[words.index("-m") - 1:]  # from the interpreter on (an environment assignment may lead)


def test_default_is_llamacpp_on_an_f32_gguf_with_eight_rows() -> None:
    lines = dry_run()
    assert any(line == "bash scripts/llamacpp_venv.sh" for line in lines)
    assert any(line.startswith("bash scripts/export_gguf.sh models/stage2 ") and line.endswith(" f32")
               for line in lines)
    cmd = serve_command(lines)
    assert cmd[cmd.index("--backend") + 1] == "llamacpp"
    assert cmd[cmd.index("--gguf") + 1].endswith("serve-stage2-f32.gguf")
    assert cmd[cmd.index("--max-batch") + 1] == "8"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


def test_transformers_needs_no_build_and_no_conversion() -> None:
    lines = dry_run("BACKEND=transformers")
    assert not any("llamacpp_venv.sh" in line or "export_gguf.sh" in line for line in lines)
    cmd = serve_command(lines)
    assert cmd[cmd.index("--backend") + 1] == "transformers"
    assert "--gguf" not in cmd
