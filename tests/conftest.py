import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests need CUDA: skipped (with the reason) where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_config():
    from smartedit.config import preset

    return preset("tiny")


def _make_batch(model, n=2, seed=0, edit=True):
    """A small training batch for ``model`` (tiny preset): edit conversations + random source/target images."""
    g = torch.Generator().manual_seed(seed)
    res = model.config.resolution
    batch = model.tokenize_edit([f"remove the red circle number {i}" for i in range(n)])
    batch["source_images"] = torch.rand(n, 3, res, res, generator=g) * 2 - 1
    batch["target_images"] = torch.rand(n, 3, res, res, generator=g) * 2 - 1
    if not edit:
        batch["is_edit"] = torch.zeros(n)
    return batch


@pytest.fixture
def make_batch():
    return _make_batch


@pytest.fixture
def tiny_model(tiny_config):
    from smartedit.model import SmartEditModel

    return SmartEditModel.from_config(tiny_config, seed=0)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, 2 OpenMP threads competing with other processes run a tiny
    model ~10x slower than one (spin-waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
