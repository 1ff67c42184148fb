"""The ``smartedit`` command: ``info`` on the meta device and ``edit`` with the tiny model."""

import json
import resource
import time

import pytest
from PIL import Image

from smartedit.cli import main

EXAMPLE = "checkpoints/examples/shapes.png"


def test_info_7b_counts_on_meta_device(capsys):
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    assert main(["info", "--preset", "7b", "--json"]) == 0
    elapsed = time.perf_counter() - start
    info = json.loads(capsys.readouterr().out)
    comps = info["components"]
    assert abs(comps["llm"] - 6.74e9) / 6.74e9 < 0.01
    assert abs(comps["unet"] - 859.5e6) / 859.5e6 < 0.01
    assert abs(comps["vision"] - 303.2e6) / 303.2e6 < 0.01
    assert comps["projector"] == 1024 * 4096 + 4096
    assert info["trainable"]["stage2a"]["parts"]["lora"] == 32 * 2 * 8 * (4096 + 4096)
    assert "bim" not in info["trainable"]["stage2a"]["parts"]
    # built on the meta device: no real allocation (a real 7B model needs > 25 GB)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 2000, grown_mb
    assert elapsed < 120


def test_info_text_output(capsys):
    main(["info", "--preset", "13b"])
    out = capsys.readouterr().out
    assert "llm" in out and "stage2b" in out and "13.016 B" in out


@pytest.mark.slow
def test_edit_random_tiny_writes_outputs(tmp_path, capsys):
    out = tmp_path / "edited.png"
    assert main(["edit", "--model", "random:tiny", "--image", EXAMPLE, "--instruction", "remove the red circle",
                 "--steps", "3", "--seed", "7", "--output", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["seed"] == 7 and result["output"] == str(out)
    edited = Image.open(out)
    assert edited.size == Image.open(EXAMPLE).size
    assert Image.open(result["side_by_side"]).size == (2 * edited.width, edited.height)


def test_edit_errors_are_clear(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        main(["edit", "--model", "random:tiny", "--image", str(tmp_path / "nope.png"), "--instruction", "x"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    with pytest.raises(SystemExit, match="cannot read image"):
        main(["edit", "--model", "random:tiny", "--image", str(bad), "--instruction", "x"])
    with pytest.raises(SystemExit, match="real weights"):
        main(["edit", "--model", "random:7b", "--image", EXAMPLE, "--instruction", "x"])
