"""Run the benchmarks: ``python -m bench`` (all) or ``python -m bench NAME [ARGS...]`` (one).

Each module listed in BENCHMARKS lives in this package and has ``main(argv: list[str] | None)``;
arguments after the name are passed to it.
"""

from __future__ import annotations

import importlib
import sys

# name on the command line -> module in bench/
BENCHMARKS = {
    "filter": "bench.filter_bench",
    "serve": "bench.serve_bench",
    "tools": "bench.tools_bench",
    "toolset": "bench.toolset_bench",
    "forward": "bench.forward_bench",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("benchmarks:", ", ".join(BENCHMARKS))
        return 0
    if argv:
        name, rest = argv[0], argv[1:]
        if name not in BENCHMARKS:
            print(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
        selected = {name: BENCHMARKS[name]}
    else:
        selected, rest = BENCHMARKS, []
    for name, module_name in selected.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            # Listed but not written yet: say so instead of failing the whole run.
            print(f"== {name}: {module_name} is not available, skipped", flush=True)
            continue
        print(f"== {name} ({module_name})", flush=True)
        module.main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
