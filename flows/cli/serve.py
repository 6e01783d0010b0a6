"""`kairos serve`: the serving runtime (`serving.server`), in a process image of its own.

The serving code imports neither mlflow, torch nor great_expectations; neither does this module. The `kairos`
process, though, has imported every command group by the time `serve` runs (Prefect and its dependencies:
~75 MB resident), none of which serving needs. So `kairos serve ARGS` checks its arguments as usual, then
replaces its process (`os.execv`) with `python -OO -m serving.server ARGS`: same pid, same signals and exit
status, the same environment, and only the serving stack resident (`benchmarks/bench_serving.py` measures it).
`-OO` leaves the ~750 imported modules' docstrings (and asserts) out of memory, ~3 MB: the OpenAPI page
(/docs) then has no endpoint descriptions; `python -m serving.server` keeps them.
Called in-process (not as the `serve` command of a program, e.g. from a test's CliRunner), it runs the
server in this process, as before.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

from serving.server import serve as _serve


@functools.wraps(_serve)  # the same options (typer reads the signature through __wrapped__)
def serve(*args: Any, **kwargs: Any) -> None:
    argv = sys.argv
    if len(argv) > 1 and argv[1] == "serve":  # `kairos serve ...` / `python -m flows.cli serve ...`
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-OO", "-m", "serving.server", *argv[2:]])
    return _serve(*args, **kwargs)


__all__ = ["serve"]
