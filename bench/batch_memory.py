"""Peak memory of ``smartedit edit --batch`` against the number of rows, for large input images.

Each run is a fresh process (``smartedit edit --model random:tiny --batch jobs.jsonl --batch-size B``) over N rows
of the same large flat PNG (a small file that decodes to SIDE x SIDE RGB); its peak resident memory
(``ru_maxrss``) is printed side by side for N = 1, 4, 16. Images are decoded one chunk of ``--batch-size`` rows at a
time, so the peak should stay flat once N exceeds the batch size (it grew by ~270 MB per row of an 8192² PNG when
every row was decoded before the first edit).

Usage::

    python bench/batch_memory.py                      # 6000x6000 images, rows 1 4 16, batch size 4
    python bench/batch_memory.py --side 4000 --rows 1 2 8 16 --batch-size 2 --json-out bench/results/batch_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import resource, sys
from smartedit.cli import main
code = main(sys.argv[1:])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "EXIT", code)
"""


def run(rows: int, side: int, batch_size: int, steps: int, work: str) -> dict:
    from PIL import Image

    image = os.path.join(work, f"large_{side}.png")
    if not os.path.exists(image):
        Image.new("RGB", (side, side), (200, 40, 40)).save(image)
    folder = os.path.join(work, f"rows{rows}")
    os.makedirs(folder, exist_ok=True)
    jobs = os.path.join(work, f"jobs_{rows}.jsonl")
    with open(jobs, "w", encoding="utf-8") as f:
        for i in range(rows):
            f.write(json.dumps({"image": os.path.basename(image), "instruction": f"remove the red circle {i}"}) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, "edit", "--model", "random:tiny", "--batch", jobs,
                           "--output-dir", folder, "--batch-size", str(batch_size), "--steps", str(steps)],
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK_RSS_KB")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"error: the batch of {rows} rows failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    peak_kb, code = int(line[0].split()[1]), int(line[0].split()[3])
    return {"rows": rows, "peak_rss_mb": round(peak_kb / 1024, 1), "seconds": round(seconds, 1), "exit": code,
            "file_kb": round(os.path.getsize(image) / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=6000, help="image width = height (default 6000: 36 MP)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        results = [run(n, args.side, args.batch_size, args.steps, work) for n in args.rows]
    base = results[0]["peak_rss_mb"]
    print(f"{args.side}x{args.side} PNG ({results[0]['file_kb']} KB), --batch-size {args.batch_size}")
    print(f"{'rows':>5} {'peak RSS MB':>12} {'vs ' + str(results[0]['rows']) + ' row(s)':>12} {'seconds':>8}")
    for r in results:
        print(f"{r['rows']:>5} {r['peak_rss_mb']:>12.1f} {r['peak_rss_mb'] / base:>12.2f} {r['seconds']:>8.1f}")
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump({"side": args.side, "batch_size": args.batch_size, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
