"""Shared test helpers (importable from tests: pytest puts this folder on sys.path)."""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relpath: str, name: str | None = None):
    """Import a repo script that is not part of the installed package (``eval/reason_edit.py``,
    ``train/stage1_align.py``, ``bench/…``, ``data_recipes/…``) from its file."""
    path = relpath if os.path.isabs(relpath) else os.path.join(REPO, relpath)
    name = name or "script_" + os.path.relpath(path, REPO).replace(os.sep, "_")[:-3]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
