"""Run a `soar` command under cProfile and write the profile when it stops, also through
`exit_now` (which leaves without interpreter finalization, see soar/stack/lifecycle.py).

    python bench/profiled.py OUT.prof worker
"""

from __future__ import annotations

import cProfile
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    profile = cProfile.Profile()
    leave = os._exit

    def dump_then_exit(code: int) -> None:
        profile.disable()
        profile.dump_stats(out)
        leave(code)

    # A benchmark harness, not the product: the profile must be written before the exit.
    os._exit = dump_then_exit  # type: ignore[assignment]
    sys.argv = ["soar", *args]
    from atlas_soar.cli import main as soar_main

    profile.enable()
    try:
        soar_main()
    finally:
        dump_then_exit(0)


if __name__ == "__main__":
    main()
