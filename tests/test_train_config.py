"""smartedit.train without launching DeepSpeed: experiment configs and presets, the DeepSpeed JSON rules, the LR
schedule, atomic checkpoints, random state, the data stream, sources, CLIP-text targets, stage models."""

import json
import os

import numpy as np
import pytest
from helpers import load_script
import torch

from smartedit.config import ConfigError, preset
from smartedit.model import SmartEditModel
from smartedit.train import checkpoint as ckpt
from smartedit.train.config import ExperimentConfig, parse_override
from smartedit.train.engine import DS_CONFIGS, load_ds_config, prepare_ds_config
from smartedit.train.presets import CONFIG_FILES, experiment_preset
from smartedit.train.schedule import build_scheduler, lr_factor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread (see test_train_stages.one_thread: much faster on a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- experiment configs and presets -------------------------------------------------------------------------
def test_paper_presets():
    s1, s2a, s2b = (experiment_preset("7b", s) for s in ("stage1", "stage2a", "stage2b"))
    assert (s1.max_steps, s1.global_batch_size, s1.optim.lr, s1.optim.schedule) == (150_000, 128, 2e-4, "cosine")
    assert (s2a.max_steps, s2a.global_batch_size, s2a.optim.lr) == (5_000, 128, 1e-5)
    assert (s2b.max_steps, s2b.global_batch_size, s2b.optim.lr) == (15_000, 128, 1e-5)
    assert s1.warmup_steps == 6000 and s2a.warmup_steps == 5 and s2b.warmup_steps == 0
    for cfg in (s1, s2a, s2b):
        assert cfg.accumulation_steps(8) == 128 // (8 * cfg.micro_batch_size)
        assert cfg.gradient_checkpointing and cfg.optim.weight_decay == 0 and cfg.optim.grad_clip == 1.0
    assert s1.data.ratios == {"cc12m": 1.0}
    assert experiment_preset("13b", "stage2b").to_dict() | {"preset": "7b"} == s2b.to_dict()


def test_presets_use_the_data_mixture():
    from smartedit.data.mixture_config import DEFAULT_STAGE2_RATIOS

    for size in ("tiny", "7b", "13b"):
        for stage in ("stage2a", "stage2b"):
            assert experiment_preset(size, stage).data.ratios == DEFAULT_STAGE2_RATIOS
    tiny = experiment_preset("tiny", "stage2a").data
    assert set(tiny.sources) == set(DEFAULT_STAGE2_RATIOS)
    paper = experiment_preset("7b", "stage2a").data
    assert paper.root == "data" and paper.sources == {}
    from smartedit.data.sources import source_specs

    assert source_specs(paper)["ip2p"] == os.path.join("data", "ip2p")
    with pytest.raises(ConfigError, match="without a path"):
        experiment_preset("7b", "stage2a", **{"data.root": None})


def test_shipped_configs_match_presets():
    for size in ("tiny", "7b", "13b"):
        for stage, name in CONFIG_FILES.items():
            path = os.path.join(REPO, "train", "configs", size, name)
            assert ExperimentConfig.load(path).to_dict() == experiment_preset(size, stage).to_dict(), path
    for name, cfg in DS_CONFIGS.items():
        with open(os.path.join(REPO, "train", "ds", f"{name}.json")) as f:
            shipped = json.load(f)
        assert shipped == json.loads(json.dumps(cfg)), name
        assert shipped["bf16"]["enabled"] == "auto" and "scheduler" not in shipped and "optimizer" not in shipped
    assert DS_CONFIGS["zero3_offload"]["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def test_experiment_config_reports_every_problem():
    data = experiment_preset("tiny", "stage1").to_dict()
    data.update(stage="stage9", max_steps=0, precision="fp16", bogus=1)
    data["optim"].update(lr=-1, betas=[0.9])
    data["data"]["ratios"] = {"nope": 1}
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict(data)
    text = str(err.value)
    assert "unknown key 'bogus'" in text
    data.pop("bogus")
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict(data)
    text = str(err.value)
    for needle in ("stage must be one of", "max_steps", "fp16 is not supported", "optim.lr", "optim.betas",
                   "data.ratios name sources"):
        assert needle in text


def test_overrides_and_batch_layout():
    cfg = experiment_preset("tiny", "stage2a")
    cfg2 = cfg.replace(**{"optim.lr": 1e-4, "data.sources.extra": "shapes:simple:4", "data.ratios.extra": 0.5})
    assert cfg2.optim.lr == 1e-4 and cfg2.data.sources["extra"] == "shapes:simple:4"
    assert parse_override("optim.betas=[0.9, 0.95]") == ("optim.betas", [0.9, 0.95])
    assert parse_override("init=runs/a=b") == ("init", "runs/a=b")
    paper = experiment_preset("7b", "stage1")
    assert paper.accumulation_steps(4) == 2
    with pytest.raises(ConfigError, match="multiple of"):
        paper.accumulation_steps(3)
    with pytest.raises(ConfigError, match="contradicts"):
        paper.replace(gradient_accumulation_steps=3).accumulation_steps(8)


# ---- DeepSpeed JSON rules --------------------------------------------------------------------------------------
def _prepare(raw, **kw):
    args = dict(micro_batch_size=2, accumulation_steps=3, world_size=2, grad_clip=1.0, precision="fp32")
    return prepare_ds_config(raw, **{**args, **kw})


def test_ds_config_auto_values_are_filled():
    cfg = _prepare(load_ds_config("zero3"))
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["train_batch_size"]) \
        == (2, 3, 12)
    assert cfg["gradient_clipping"] == 1.0 and cfg["bf16"] == {"enabled": False, "check_grad_overflow": True}
    assert _prepare(load_ds_config("zero2"), precision="bf16")["bf16"]["enabled"] is True
    assert _prepare(load_ds_config("zero3_offload"))["zero_force_ds_cpu_optimizer"] is False
    with open(os.path.join(REPO, "train", "ds", "zero2.json")) as f:
        assert load_ds_config(os.path.join(REPO, "train", "ds", "zero2.json")) == json.load(f)


def test_ds_config_rejects_what_would_silently_override_the_experiment():
    raw = load_ds_config("zero2")
    raw["scheduler"] = {"type": "WarmupLR", "params": {}}
    raw["optimizer"] = {"type": "AdamW", "params": {}}
    raw["fp16"] = {"enabled": True}
    raw["train_micro_batch_size_per_gpu"] = 4
    raw["bf16"]["enabled"] = True
    raw["zero_optimization"]["stage"] = 0
    with pytest.raises(ConfigError) as err:
        _prepare(raw)
    text = str(err.value)
    for needle in ("'scheduler' block", "'optimizer' block", "fp16", "train_micro_batch_size_per_gpu = 4",
                   "bf16.enabled", "stage must be 1, 2 or 3"):
        assert needle in text, needle


# ---- LR schedule ----------------------------------------------------------------------------------------------
def test_warmup_then_cosine():
    assert [lr_factor(s, 10, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 10, 4) == 1.0 and lr_factor(7, 10, 4) == pytest.approx(0.5)
    assert lr_factor(10, 10, 4) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(10, 10, 0, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(5, 10, 2, schedule="constant") == 1.0
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_scheduler(opt, 10, 4)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2.0 * lr_factor(s, 10, 4) for s in range(6)])


# ---- checkpoints ---------------------------------------------------------------------------------------------
def _fake_checkpoint(root, step, complete=True):
    staging = ckpt.staging_dir(root, step)
    os.makedirs(os.path.join(staging, "deepspeed"))
    with open(os.path.join(staging, "deepspeed", "w.bin"), "wb") as f:
        f.write(b"x" * step)
    if complete:
        ckpt.write_manifest(staging, {"step": step})
        ckpt.finalize(staging, os.path.join(root, ckpt.checkpoint_name(step)))
    return staging


def test_atomic_checkpoints_latest_and_keep_last(tmp_path):
    root = str(tmp_path)
    assert ckpt.find_checkpoint(root, "latest") is None
    for step in (1, 2, 3):
        _fake_checkpoint(root, step)
    _fake_checkpoint(root, 4, complete=False)  # killed while writing: never read
    os.makedirs(os.path.join(root, ckpt.checkpoint_name(5)))  # renamed without manifest (cannot happen, but)
    assert ckpt.find_checkpoint(root, "latest").endswith(ckpt.checkpoint_name(3))
    with open(os.path.join(root, ckpt.checkpoint_name(3), "deepspeed", "w.bin"), "ab") as f:
        f.write(b"torn")
    assert "manifest says" in ckpt.verify_checkpoint(os.path.join(root, ckpt.checkpoint_name(3)))[0]
    assert ckpt.find_checkpoint(root, "latest").endswith(ckpt.checkpoint_name(2))
    with pytest.raises(ValueError, match="incomplete"):
        ckpt.find_checkpoint(root, ckpt.checkpoint_name(3))
    removed = ckpt.prune(root, keep_last=1)
    assert any(".staging-" in r for r in removed)
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [2]
    _fake_checkpoint(root, 2)  # re-saving a step replaces it
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [2]


def test_rng_roundtrip(tmp_path):
    import random

    from smartedit.train.rng import load_rng, restore_rng, save_rng

    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    save_rng(str(tmp_path / "r.json"))
    a = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    restore_rng(load_rng(str(tmp_path / "r.json")))
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


# ---- data stream and sources ---------------------------------------------------------------------------------
def test_step_batches_are_disjoint_per_process_and_deterministic(tiny_model):
    from smartedit.data.collate import SampleCollator
    from smartedit.data.loader import StepBatches, build_loader
    from smartedit.data.sources import open_source

    sources = {"a": open_source("shapes:simple:16"), "b": open_source("shapes:chat:16")}
    collate = SampleCollator(tiny_model.config, tiny_model.tokenizer)
    ranks = [StepBatches(sources, {"a": 1, "b": 1}, collate, 2, rank=r, world_size=2, seed=5) for r in (0, 1)]
    draws = [set(ranks[r].draw_indices(k)) for r in (0, 1) for k in range(3)]
    assert len(set().union(*draws)) == 12  # every draw used exactly once
    direct = [ranks[1][k] for k in range(2, 5)]
    loaded = list(build_loader(ranks[1], 2, 5, num_workers=1))
    for d, l in zip(direct, loaded):
        assert d["ids"] == l["ids"] and d["micro_index"] == l["micro_index"]
        assert torch.equal(d["input_ids"], l["input_ids"]) and torch.equal(d["target_images"], l["target_images"])


def test_sources_parquet_shapes_python_and_root(tmp_path, monkeypatch):
    from smartedit.data.io import write_samples
    from smartedit.train.config import DataConfig
    from smartedit.data.sources import open_source, open_sources

    samples = open_source("shapes:simple:5") + open_source("shapes:caption:2", str(tmp_path))
    assert all(not s.problems() for s in samples) and samples[0] == open_source("shapes:simple:5")[0]
    write_samples(samples, tmp_path / "root" / "ip2p", "ip2p-train")
    ds = open_source("root/ip2p", base_dir=str(tmp_path))
    assert len(ds) == 7 and [ds[i].id for i in range(7)] == [s.id for s in samples]
    assert ds[6].caption == samples[6].caption and ds[2].source_image == samples[2].source_image
    opened = open_sources(DataConfig(ratios={"ip2p": 1.0, "cc12m": 0.0, "chat": 0.5}, root="root",
                                     sources={"chat": "shapes:chat:3"}), base_dir=str(tmp_path))
    assert sorted(opened) == ["chat", "ip2p"] and len(opened["ip2p"]) == 7  # cc12m (ratio 0) is not opened
    (tmp_path / "my_reader.py").write_text("from smartedit.data.sources import open_source\n"
                                           "def samples():\n    return open_source('shapes:chat:2')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert len(open_source("python:my_reader:samples")) == 2
    with pytest.raises(FileNotFoundError, match="parquet"):
        open_source("missing", base_dir=str(tmp_path))


# ---- CLIP text targets and stage models ----------------------------------------------------------------------
def test_tiny_clip_text_targets(tmp_path, tiny_config):
    from smartedit.train.clip_text import ClipTextTarget, build_tiny_clip_text

    clip = ClipTextTarget(build_tiny_clip_text(str(tmp_path / "clip"), hidden_size=64))
    clip.check_model(tiny_config)
    out = clip(["a red square", "a much longer caption " * 30])
    assert out.shape == (2, 77, 64) and torch.isfinite(out).all()
    null = clip.null_embedding()
    assert null.shape == (1, 77, 64) and not torch.equal(null[0], out[0])
    with pytest.raises(ValueError, match="qformer.hidden_size"):
        clip.check_model(preset("7b"))


def test_stage2b_starts_exactly_where_stage2a_ended(tiny_config, make_batch):
    from smartedit.train.stage_model import StageModule, prepare_stage_model

    model = SmartEditModel.from_config(tiny_config.replace(**{"bim.enabled": False}))
    prepare_stage_model(model, "stage2a")
    with torch.no_grad():  # a "trained" 2a model: LoRA B no longer zero
        for p in model.mllm.lora_parameters():
            p.add_(0.01)
    batch = make_batch(model)
    model.eval()
    before = model(batch, generator=torch.Generator().manual_seed(0))
    prepare_stage_model(model, "stage2b", seed=1)
    assert model.bim is not None and model.config.bim.enabled
    assert model.bim.text_out.weight.requires_grad and not model.mllm.projector.weight.requires_grad
    after = StageModule(model, "stage2b").eval()(batch, generator=torch.Generator().manual_seed(0))
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_stage2a_from_weights_with_a_bim_trains_mllm_sd(tiny_config, caplog):
    from smartedit.stages import STAGES
    from smartedit.train.stage_model import prepare_stage_model

    assert STAGES == ("stage1", "stage2a", "stage2b")
    model = SmartEditModel.from_config(tiny_config)  # e.g. released SmartEdit weights: BIM, no LoRA
    assert model.bim is not None
    prepare_stage_model(model, "stage2a")
    assert model.bim is None and not model.config.bim.enabled and "dropping the BIM" in caplog.text
    assert model.config.lora.r == 8 and not any(k.startswith("bim.") for k in model.state_dict())


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config, make_batch):
    from smartedit.train.stage_model import enable_gradient_checkpointing, prepare_stage_model

    grads = []
    for checkpointing in (False, True):
        model = SmartEditModel.from_config(tiny_config.replace(**{"bim.enabled": False}), seed=0)
        prepare_stage_model(model, "stage2a")
        if checkpointing:
            enable_gradient_checkpointing(model)
        model.train()
        torch.manual_seed(0)
        model(make_batch(model), generator=torch.Generator().manual_seed(0))["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6)


# ---- the stage scripts' command line -------------------------------------------------------------------------
def _script(name):
    return load_script(f"train/{name}.py")


def test_scripts_reject_bad_runs_with_a_message(tmp_path, caplog):
    s1, s2a = _script("stage1_align").main, _script("stage2_mllmsd").main
    out = ["--output", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_:
        s1(["--help"])
    assert exit_.value.code == 0
    assert s1(["--init", "random:tiny", *out, "--set", "optim.lr=-1", "--clip-text", "x"]) == 2
    assert "optim.lr must be a number > 0" in caplog.text
    assert s1(["--init", "random:tiny", *out]) == 2
    assert "stage 1 needs the CLIP text encoder" in caplog.text
    assert s2a(["--config", os.path.join(REPO, "train", "configs", "tiny", "stage1_align.json"), *out]) == 2
    assert "this script runs stage2a" in caplog.text
    assert s2a(["--init", str(tmp_path / "nowhere"), *out]) == 2
    assert "neither a model folder" in caplog.text
    bad = dict(DS_CONFIGS["zero2"], scheduler={"type": "WarmupLR", "params": {}})
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert s2a(["--init", "random:tiny", *out, "--deepspeed", str(tmp_path / "bad.json")]) == 2
    assert "'scheduler' block" in caplog.text
