"""Data source kinds of the trainer (smartedit.data.sources): ``shapes:`` comes from the shapes package's entry
point (the trainer never imports it), any package can register a kind, and bad specs are clear errors."""

import subprocess
import sys

import pytest

from smartedit.data.sources import open_source, register_source_kind, source_kinds


def test_shapes_is_a_declared_kind_the_trainer_does_not_import():
    from smartedit.shapes.world import training_samples

    assert {"python", "shapes"} <= set(source_kinds())
    assert open_source("shapes:reasoning:3:2") == list(training_samples("reasoning", 3, seed=2))
    # a fresh process: the trainer and its data layer load without the experiment; opening a spec loads it
    code = ("import sys\nimport smartedit.train.trainer, smartedit.train.cli, smartedit.data.loader\n"
            "assert not any(m.startswith('smartedit.shapes') for m in sys.modules), 'imported early'\n"
            "from smartedit.data.sources import open_source\n"
            "assert len(open_source('shapes:chat:2')) == 2 and 'smartedit.shapes.sources' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_registered_kind_gets_the_spec_and_base_dir(tmp_path):
    from smartedit.data.schema import Sample

    calls = []

    def opener(spec, base_dir):
        calls.append((spec, base_dir))
        return [Sample(f"mine/{i}", "mine", "caption", caption=spec) for i in range(int(spec.split(":")[1]))]

    register_source_kind("mine_test", opener)
    samples = open_source("mine_test:3", base_dir=str(tmp_path))
    assert len(samples) == 3 and calls == [("mine_test:3", str(tmp_path))] and "mine_test" in source_kinds()


@pytest.mark.parametrize("spec, error, match", [
    ("shapes:simple", ValueError, "shapes:FAMILY:N, shapes:FAMILY:N:SEED or shapes:FAMILY:N:SEED:reply"),
    ("shapes:simple:2:0:9", ValueError, "shapes:FAMILY:N"),
    ("shapes:nosuchfamily:2", ValueError, "unknown ShapesWorld family"),
    ("python:only_a_module", ValueError, "python:MODULE:FUNCTION"),
    ("nosuchkind:1", FileNotFoundError, r"known source kind \(.*python:\.\.\., shapes:\.\.\."),
    ("no/such/folder", FileNotFoundError, "parquet shards"),
])
def test_bad_specs_are_clear_errors(tmp_path, spec, error, match):
    with pytest.raises(error, match=match):
        open_source(spec, base_dir=str(tmp_path))


def test_a_kind_is_a_plain_name():
    with pytest.raises(ValueError, match="plain name"):
        register_source_kind("no:colons", lambda spec, base_dir: [])
