"""A batch of large images is decoded a chunk of ``--batch-size`` rows at a time: the peak memory of
``smartedit edit --batch`` does not grow with the number of rows (``bench/batch_memory.py`` measures it at 36 MP)."""

import os

import pytest
from helpers import load_script

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_peak_memory_of_a_batch_does_not_grow_with_its_rows(tmp_path):
    bench = load_script(os.path.join(ROOT, "bench", "batch_memory.py"))
    side = 3000
    decoded_mb = side * side * 3 / 2**20  # one decoded row: 25.7 MB
    few, many = (bench.run(rows, side, batch_size=2, steps=1, work=str(tmp_path)) for rows in (2, 18))
    assert few["exit"] == many["exit"] == 0
    # decoding every row up front would add 16 decoded images (~410 MB) for the 16 extra rows; allocator noise is
    # ~100 MB
    assert many["peak_rss_mb"] - few["peak_rss_mb"] < 6 * decoded_mb, (few, many)
