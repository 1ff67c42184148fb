"""Every ```python block of the README runs as written (in a scratch folder that sees the shipped checkpoints)."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_blocks() -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_the_readme_has_python_snippets():
    assert len(_python_blocks()) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_snippet_runs(index, tmp_path, monkeypatch, one_torch_thread):
    os.symlink(os.path.join(ROOT, "checkpoints"), tmp_path / "checkpoints")
    monkeypatch.chdir(tmp_path)
    code = _python_blocks()[index]
    exec(compile(code, f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})
