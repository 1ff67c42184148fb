"""Wall time of the README's main-job command (an edit of the shipped example with the shipped SmartEdit-tiny) against
its 30-second budget on this machine, run as a fresh process exactly as a newcomer runs it (imports, model load,
edit, writing both PNGs). Prints the median of ``--repeats`` runs and its ratio to the budget.

    python bench/main_job.py [--repeats 3] [--budget 30]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time


def readme_command(readme: str = "README.md") -> list[str]:
    """The smartedit arguments of the README's first command (after ``bash scripts/setup.sh &&``)."""
    with open(readme, encoding="utf-8") as f:
        block = re.search(r"```bash\n(.*?)\n```", f.read(), re.S)
    if block is None or "&&" not in block.group(1):
        raise SystemExit(f"{readme}: no first ```bash block of the form 'bash scripts/setup.sh && .venv/bin/smartedit ...'")
    words = shlex.split(block.group(1).split("&&", 1)[1])
    if not words or not words[0].endswith("smartedit"):
        raise SystemExit(f"{readme}: the first command does not run smartedit: {words}")
    return words[1:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget", type=float, default=30.0, help="seconds the README promises (default 30)")
    args = p.parse_args(argv)
    cmd = readme_command()
    exe = os.path.join(os.path.dirname(sys.executable), "smartedit")
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "edited.png")
        run = [exe] + cmd
        run[run.index("--output") + 1] = out
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            subprocess.run(run, check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    print(json.dumps({"command": "smartedit " + shlex.join(cmd), "seconds": [round(t, 2) for t in times],
                      "median_s": round(median, 2), "budget_s": args.budget,
                      "ratio_to_budget": round(median / args.budget, 3), "threads": os.cpu_count()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
