"""The ShapesWorld recipe end to end at toy budgets: every step runs through the project's code paths (pretraining,
assembly via load_sd, stage 1 → 2a → 2b with the training scripts, the Reason-Edit evaluation, the ablation),
re-runs skip finished steps, and a changed config is refused."""

import json
import logging
import os

import pytest
import torch

from smartedit.config import ConfigError
from smartedit.shapes.recipe import MODELS, STEPS, RecipeConfig, compare_runs, reuse_pretrained, run_recipe, ship

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def toy_config() -> RecipeConfig:
    pre = {"steps": 2, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 1, "log_every": 1}
    stage = {"steps": 2, "batch_size": 2, "warmup_steps": 1, "samples_per_source": 4}
    return RecipeConfig.from_dict({
        "vae": pre, "decoder": pre, "vision": pre, "llava": pre, "ip2p": pre, "ip2p_mix": pre, "control": pre,
        "stage1": stage, "stage2a": stage, "stage2b": stage,
        "eval": {"per_category": 1, "simple": 2, "steps": 2}})


@pytest.fixture(scope="module")
def recipe_dir(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    out = str(tmp_path_factory.mktemp("recipe"))
    run_recipe(toy_config(), out, steps=STEPS[:STEPS.index("evaluate")])
    # the baselines scored in a "second process" before stage 2's models exist in a finished state
    run_recipe(toy_config(), out, steps=("evaluate",), eval_models=("identity", "ip2p"))
    PARTIAL["marker"] = os.path.isfile(os.path.join(out, "done", "evaluate.json"))
    PARTIAL["scored"] = sorted(os.listdir(os.path.join(out, "eval")))
    PARTIAL["mtime"] = os.path.getmtime(os.path.join(out, "eval", "ip2p", "summary.json"))
    run_recipe(toy_config(), out)
    return out


PARTIAL: dict = {}


def test_evaluating_some_models_leaves_the_step_open_and_is_not_repeated(recipe_dir):
    assert PARTIAL["scored"] == ["identity", "ip2p"] and not PARTIAL["marker"]
    # the full evaluate step afterwards skipped IP2P-tiny (scored after its weights were written)
    assert os.path.getmtime(os.path.join(recipe_dir, "eval", "ip2p", "summary.json")) == PARTIAL["mtime"]
    with pytest.raises(ConfigError, match="unknown model 'smartedt'"):
        run_recipe(toy_config(), recipe_dir, steps=("evaluate",), eval_models=("smartedt",))


def test_a_larger_test_set_scores_every_model_again(recipe_dir, tmp_path):
    """``--force --steps testset,evaluate,report --set eval.per_category=N`` on a finished run: the test set is
    written anew and every model scored on it, none kept from the smaller one."""
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(recipe_dir, run)
    cfg = toy_config()
    cfg.eval.per_category = 2
    run_recipe(cfg, run, steps=("testset", "evaluate", "report"), force=True)
    for name in MODELS:
        with open(os.path.join(run, "eval", name, "samples.json")) as f:
            samples = json.load(f)["samples"]
        categories = [s["group"] for s in samples]
        assert categories.count("1-Left-Right") == 2 and categories.count("7-Simple") == 2, name


def test_every_step_done_and_the_ablation_covers_every_model(recipe_dir):
    for step in STEPS:
        assert os.path.isfile(os.path.join(recipe_dir, "done", f"{step}.json")), step
    with open(os.path.join(recipe_dir, "ablation.json")) as f:
        report = json.load(f)
    assert set(report["table"]) == set(MODELS)
    for name, rows in report["table"].items():
        assert "6-Reasoning" in rows and "7-Simple" in rows, name
        assert {"edit_iou", "psnr_fg_target", "psnr_bg"} <= set(rows["7-Simple"]), name
    for key in ("smartedit-ip2p_mix", "smartedit-ip2p", "smartedit-mllmsd"):
        row = report["paired"][key]["7-Simple"]
        assert row["n"] == 2 and row["ci90"][0] <= row["mean_difference"] <= row["ci90"][1]
    identity = report["table"]["identity"]["7-Simple"]
    assert identity["edit_iou"]["mean"] == 0.0 and identity["psnr_bg"]["mean"] == 100.0
    assert os.path.isfile(os.path.join(recipe_dir, "ablation_grid.png"))
    assert "IP2P-tiny" in open(os.path.join(recipe_dir, "ablation.md")).read()
    # the ceiling row: the fair IP2P-tiny told each instruction plainly, on the same samples
    told = {}
    for name in ("ip2p_mix", "plainly"):
        with open(os.path.join(recipe_dir, "eval", name, "samples.json")) as f:
            told[name] = {s["id"]: s["meta"]["instruction"] for s in json.load(f)["samples"]}
    assert told["plainly"].keys() == told["ip2p_mix"].keys()
    said = [(told["ip2p_mix"][i], t) for i, t in told["plainly"].items() if i.startswith("6-Reasoning")]
    assert said and all(a != b and "shape" not in b.split() for a, b in said)
    assert "told plainly" in open(os.path.join(recipe_dir, "ablation.md")).read()


def test_stages_ran_with_the_project_scripts(recipe_dir):
    from smartedit.model import SmartEditModel

    model = SmartEditModel.from_pretrained(os.path.join(recipe_dir, "stage2b", "model"))
    assert model.bim is not None and model.config.scheduler.sampler == "DDIMScheduler"
    mllmsd = SmartEditModel.from_pretrained(os.path.join(recipe_dir, "stage2a", "model"))
    assert mllmsd.bim is None
    for stage in ("stage1", "stage2a", "stage2b"):
        assert os.path.isfile(os.path.join(recipe_dir, stage, "metrics.jsonl"))
    # stage 1 trains the tiny LLM's layers too (stage1_train_llm); stage 2 trains LoRA only, as in the paper
    also = {}
    for stage in ("stage1", "stage2a"):
        with open(os.path.join(recipe_dir, "configs", f"{stage}.json")) as f:
            also[stage] = json.load(f)["also_train"]
    assert also == {"stage1": ["llm"], "stage2a": []}
    # the alignment probe is reported for all families together and within each edit family
    with open(os.path.join(recipe_dir, "done", "stage1.json")) as f:
        alignment = json.load(f)["alignment"]
    assert set(alignment["per_family"]) == {"simple", "perception", "understanding", "reasoning"}
    assert all(0 <= p["top1_retrieval"] <= 1 and p["edits"] == 4 * 32 for p in alignment["per_family"].values())
    assert list(alignment["per_category"]) == ["1-Left-Right", "2-Relative-Size", "3-Mirror", "4-Color",
                                               "5-Multiple-Objects"]


def test_rerun_skips_done_steps_and_refuses_another_config(recipe_dir):
    assert run_recipe(toy_config(), recipe_dir) == {}
    other = toy_config().replace(**{"ip2p.steps": 3})
    with pytest.raises(ConfigError, match="different recipe config"):
        run_recipe(other, recipe_dir)
    with pytest.raises(ConfigError, match="unknown recipe step"):
        run_recipe(toy_config(), recipe_dir, steps=("vea",))


def test_ship_copies_both_models_and_the_ablation(recipe_dir, tmp_path):
    shipped = ship(recipe_dir, str(tmp_path))
    assert set(shipped) == {"smartedit-tiny", "ip2p-tiny", "ip2p-tiny-fair", "llava-tiny"}
    assert os.path.isfile(tmp_path / "smartedit-tiny" / "config.json")
    assert os.path.isfile(tmp_path / "smartedit-tiny" / "ablation.json")
    assert os.path.isfile(tmp_path / "ip2p-tiny" / "model_index.json")
    # shipping again replaces the model and keeps the demo examples a user wrote into the folder
    (tmp_path / "smartedit-tiny" / "examples.json").write_text('[{"instruction": "remove the red circle"}]')
    (tmp_path / "smartedit-tiny" / "seeds.json").write_text("{}")
    ship(recipe_dir, str(tmp_path))
    assert "remove the red circle" in (tmp_path / "smartedit-tiny" / "examples.json").read_text()
    assert not (tmp_path / "smartedit-tiny" / "seeds.json").exists()
    # the shipped model samples as the recipe evaluated it, for the pipeline, CLI and demo alike
    from smartedit.pipeline import SmartEditPipeline

    sampling = SmartEditPipeline.from_pretrained(str(tmp_path / "smartedit-tiny")).model.config.sampling
    e = toy_config().eval
    assert (sampling.num_inference_steps, sampling.guidance_scale, sampling.image_guidance_scale) == (
        e.steps, e.text_guidance, e.image_guidance)
    # the shipped folder keeps the per-sample scores, so a re-run on a fresh clone can --compare against it
    for name in ("ip2p", "ip2p_mix", "mllmsd", "smartedit", "plainly"):  # and the ceiling
        shipped_samples = json.loads((tmp_path / "smartedit-tiny" / "eval" / name / "samples.json").read_text())
        assert set(shipped_samples["samples"][0]["metrics"]) <= {"edit_iou", "psnr_fg_target", "psnr_bg"}
    result = compare_runs(recipe_dir, str(tmp_path / "smartedit-tiny"))
    assert result["reproduced"]
    assert all(r["mean_difference"] == 0 for rows in result["models"].values() for r in rows.values())


def test_paired_differences_match_samples_by_id_and_bound_the_mean(tmp_path):
    """A model better by exactly 0.1 on every shared sample: difference 0.1 with a zero-width interval, whatever
    the order of the samples or samples only one model has."""
    from smartedit.shapes.recipe import _Paths, paired_differences

    def write(name, scores):
        os.makedirs(tmp_path / "eval" / name)
        samples = [{"id": i, "group": "4-Color", "status": "ok", "metrics": {"edit_iou": v},
                    "meta": {"instruction": "make it red"}} for i, v in scores.items()]
        with open(tmp_path / "eval" / name / "samples.json", "w") as f:
            json.dump({"samples": samples}, f)

    base = {f"4-Color/{k:03d}": 0.05 * k for k in range(10)}
    write("ip2p", dict(reversed(list(base.items()))) | {"4-Color/999": 1.0})
    write("smartedit", {k: v + 0.1 for k, v in base.items()})
    row = paired_differences(_Paths(str(tmp_path)), "smartedit", "ip2p")["4-Color"]
    assert row["n"] == 10 and row["wins"] == 10 and row["losses"] == 0
    assert row["mean_difference"] == pytest.approx(0.1) and row["ci90"] == pytest.approx([0.1, 0.1])


def _write_scores(root, name, scores, group="4-Color"):
    os.makedirs(root / "eval" / name, exist_ok=True)
    samples = [{"id": i, "group": group, "status": "ok", "metrics": {"edit_iou": v},
                "meta": {"instruction": "make it red"}} for i, v in scores.items()]
    with open(root / "eval" / name / "samples.json", "w") as f:
        json.dump({"samples": samples}, f)


def test_compare_runs_tells_a_reproduction_from_a_different_model(tmp_path):
    """A re-run whose scores differ from the reference only by sample-level noise is reproduced; one that lost 0.3
    IoU on every sample is not, and the table marks it. The CLI exits 1 on a failed reproduction."""
    import numpy as np

    from helpers import load_script

    main = load_script("train/shapes_recipe.py").main

    rng = np.random.default_rng(0)
    base = {f"4-Color/{k:03d}": float(v) for k, v in enumerate(rng.uniform(0.3, 0.9, 30))}
    ref, same, worse = tmp_path / "ref", tmp_path / "same", tmp_path / "worse"
    for name in ("ip2p", "mllmsd", "smartedit"):
        _write_scores(ref, name, base)
        _write_scores(same, name, {k: v + float(rng.normal(0, 0.05)) for k, v in base.items()})
        _write_scores(worse, name, {k: v - (0.3 if name == "smartedit" else 0.0) for k, v in base.items()})
    ok = compare_runs(str(same), str(ref))
    assert ok["reproduced"] and ok["models"]["smartedit"]["4-Color"]["n"] == 30
    bad = compare_runs(str(worse), str(ref))
    assert not bad["reproduced"]
    assert bad["models"]["ip2p"]["4-Color"]["reproduced"] and not bad["models"]["smartedit"]["4-Color"]["reproduced"]
    assert bad["models"]["smartedit"]["4-Color"]["mean_difference"] == pytest.approx(-0.3)
    assert "✗" in (worse / "reproduction.md").read_text() and json.loads((worse / "reproduction.json").read_text())
    # the command: no training steps left to run (every step marked done), then the comparison
    for run in (same, worse):
        os.makedirs(run / "done")
        for step in STEPS:
            (run / "done" / f"{step}.json").write_text("{}")
    assert main(["--output", str(same), "--compare", str(ref)]) == 0
    assert main(["--output", str(worse), "--compare", str(ref)]) == 1


def test_compare_runs_needs_both_evaluations(tmp_path):
    _write_scores(tmp_path / "a", "smartedit", {"4-Color/000": 0.5})
    with pytest.raises(FileNotFoundError, match="evaluate step"):
        compare_runs(str(tmp_path / "a"), str(tmp_path / "b"), models=("smartedit",))
    _write_scores(tmp_path / "b", "smartedit", {"4-Color/001": 0.5})
    with pytest.raises(FileNotFoundError, match="same test set"):
        compare_runs(str(tmp_path / "a"), str(tmp_path / "b"), models=("smartedit",))


def test_the_fair_baseline_fine_tunes_ip2p_tiny_on_the_stage2_edits(recipe_dir):
    with open(os.path.join(recipe_dir, "ip2p_mix", "pipeline", "smartedit.json")) as f:
        info = json.load(f)
    assert info["family"] == "stage2" and info["init"] == os.path.join(recipe_dir, "ip2p", "pipeline")
    with open(os.path.join(recipe_dir, "done", "ip2p_mix.json")) as f:
        assert set(json.load(f)["families"]) == {"simple", "perception", "understanding", "reasoning"}


def _fake_seed_run(root, seed, gap):
    """A finished recipe run of ``seed`` whose SmartEdit-tiny beats the fair IP2P-tiny by ``gap[group]`` on each
    of 30 held-out samples per group (sample noise around it)."""
    import numpy as np

    from smartedit.shapes.recipe import GROUPS

    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    RecipeConfig().replace(seed=seed).save(str(root / "recipe.json"))
    (root / "ablation.json").write_text("{}")
    per_model = {m: [] for m in ("ip2p_mix", "mllmsd", "smartedit")}
    for group in GROUPS[:7]:
        for k in range(30):
            base = float(rng.uniform(0.5, 0.75))
            for name, v in (("ip2p_mix", base), ("mllmsd", base + gap.get(group, 0.0) - 0.02),
                            ("smartedit", base + gap.get(group, 0.0) + float(rng.normal(0, 0.02)))):
                per_model[name].append({"id": f"{group}/{k:03d}", "group": group, "status": "ok",
                                        "metrics": {"edit_iou": v, "psnr_bg": 31.0}, "meta": {"instruction": "x"}})
    for name, samples in per_model.items():
        os.makedirs(root / "eval" / name)
        (root / "eval" / name / "samples.json").write_text(json.dumps({"samples": samples}))
    return str(root)


def test_seed_summary_reports_the_spread_and_checks_the_claim_seed_by_seed(tmp_path):
    """Three seeds where SmartEdit-tiny wins every claimed category by about 0.2: the claim holds. Let one seed
    lose Mirror and it fails on Mirror alone, though the mean over seeds still clears the margin."""
    from helpers import load_script

    from smartedit.shapes.recipe import CLAIM_GROUPS, seed_summary

    main = load_script("train/shapes_recipe.py").main
    wins = dict.fromkeys(CLAIM_GROUPS, 0.2)
    runs = [_fake_seed_run(tmp_path / f"s{seed}", seed, wins) for seed in range(3)]
    result = seed_summary(runs, str(tmp_path / "seeds"))
    assert result["seeds"] == [0, 1, 2]
    assert all(c["holds"] for c in result["claim"].values()), result["claim"]
    mirror = result["paired"]["smartedit-ip2p_mix"]["3-Mirror"]
    assert mirror["mean"] == pytest.approx(0.2, abs=0.02) and len(mirror["ci90"]) == 3
    cell = result["table"]["smartedit"]["3-Mirror"]
    assert cell["min"] <= cell["mean"] <= cell["max"] and len(cell["per_seed"]) == 3 and cell["std"] > 0
    assert "± " in (tmp_path / "seeds" / "seeds.md").read_text()
    assert main(["--summarize", ",".join(runs), "--output", str(tmp_path / "seeds")]) == 0

    runs[2] = _fake_seed_run(tmp_path / "s3", 3, wins | {"3-Mirror": -0.05})
    result = seed_summary(runs, str(tmp_path / "seeds"))
    failed = [name for name, c in result["claim"].items() if not c["holds"]]
    assert failed == ["wins 3-Mirror"] and result["paired"]["smartedit-ip2p_mix"]["3-Mirror"]["mean"] > 0.10
    assert main(["--summarize", ",".join(runs), "--output", str(tmp_path / "seeds")]) == 1

    for run in runs[1:]:  # seeds that took seed 0's pretrained parts (--pretrained-from) say so
        os.makedirs(os.path.join(run, "done"), exist_ok=True)
        with open(os.path.join(run, "done", "llava.json"), "w") as f:
            json.dump({"reused_from": runs[0], "reused_seed": 0}, f)
    result = seed_summary(runs, str(tmp_path / "seeds"))
    assert result["pretrained"] == {runs[0]: runs[0], runs[1]: runs[0], runs[2]: runs[0]}
    assert f"{runs[1]}, {runs[2]} took the pretrained parts" in (tmp_path / "seeds" / "seeds.md").read_text()


def test_seed_summary_refuses_unfinished_runs_and_repeated_seeds(tmp_path):
    from helpers import load_script

    from smartedit.shapes.recipe import seed_summary

    main = load_script("train/shapes_recipe.py").main
    a = _fake_seed_run(tmp_path / "a", 0, {})
    b = _fake_seed_run(tmp_path / "b", 0, {})
    with pytest.raises(ValueError, match="share seeds"):
        seed_summary([a, b], str(tmp_path / "out"))
    with pytest.raises(ValueError, match="at least two"):
        seed_summary([a], str(tmp_path / "out"))
    assert main(["--summarize", f"{a},{tmp_path / 'missing'}", "--output", str(tmp_path / "out")]) == 2


def test_a_pretrained_vision_tower_and_a_wider_llava_reach_the_assembled_model(tmp_path):
    """``llava_vision`` pretrains the tower in the vision step and the llava step keeps it; ``mllm_config`` widens
    LLaVA-tiny (and the BIM with its tower) wherever the recipe builds the model. Bad overrides are refused with
    every problem listed."""
    from safetensors.torch import load_file

    wide = {"vision.hidden_size": 96, "vision.intermediate_size": 192, "bim.hidden_size": 96,
            "mllm.num_hidden_layers": 3}
    cfg = toy_config().replace(llava_vision=True, mllm_config=wide)
    out = str(tmp_path / "run")
    run_recipe(cfg, out, steps=("vision", "llava"))
    done = json.loads(open(os.path.join(out, "done", "vision.json")).read())
    assert {"kind", "colour", "size", "rank", "shape_kind"} <= set(done["probe"])
    tower = load_file(os.path.join(out, "vision", "vision.safetensors"))
    state = load_file(os.path.join(out, "llava", "mllm.safetensors"))
    assert all(torch.equal(state[f"vision_tower.{k}"], v) for k, v in tower.items())
    # a run without stages ships its LLaVA-tiny alone; a new run takes the tower back out of it
    assert set(ship(out, str(tmp_path / "shipped"))) == {"llava-tiny"}
    again = str(tmp_path / "again")
    reuse_pretrained(cfg, again, str(tmp_path / "shipped"))
    back = load_file(os.path.join(again, "vision", "vision.safetensors"))
    assert back.keys() == tower.keys() and all(torch.equal(back[k], v) for k, v in tower.items())
    assert "probe" in json.loads(open(os.path.join(again, "done", "vision.json")).read())
    assert tower["embeddings.position_embedding.weight"].shape[1] == 96
    assert "llm.model.layers.2.mlp.up_proj.weight" in state

    off = str(tmp_path / "off")
    run_recipe(toy_config(), off, steps=("vision",))
    assert "skipped" in json.loads(open(os.path.join(off, "done", "vision.json")).read())
    with pytest.raises(ConfigError, match="llava_skill_share"):
        toy_config().replace(llava_skill_share=1.5)
    with pytest.raises(ConfigError) as e:
        toy_config().replace(mllm_config={"vision.hidden_size": 96, "mllm.num_hiden_layers": 3})
    assert "bim.hidden_size" in str(e.value) and "num_hiden_layers" in str(e.value)


def test_a_seed_study_reuses_the_pretrained_parts_of_a_finished_run(recipe_dir, tmp_path, caplog):
    """``--pretrained-from RUN --set seed=N`` takes RUN's VAE, LLaVA-tiny and both IP2P-tiny instead of training
    them (copied without training checkpoints, marked with where they came from), so only stages 1 → 2b and the test
    set follow the new seed; a step whose budgets differ from RUN's is trained here instead, and the log names the
    field."""
    from helpers import load_script

    from smartedit.shapes.recipe import PRETRAINED_STEPS

    main = load_script("train/shapes_recipe.py").main
    out = tmp_path / "s1"
    saved = os.path.join(recipe_dir, "recipe.json")
    assert main(["--config", saved, "--set", "seed=1", "--output", str(out), "--pretrained-from", recipe_dir,
                 "--steps", "assemble,testset"]) == 0
    for step in PRETRAINED_STEPS:
        info = json.loads((out / "done" / f"{step}.json").read_text())
        assert info["reused_from"] == recipe_dir and info["reused_seed"] == 0, step
    assert (out / "ip2p_mix" / "pipeline" / "unet").is_dir() and not (out / "ip2p_mix" / "checkpoints").exists()
    assert json.loads((out / "recipe.json").read_text())["seed"] == 1
    assert (out / "done" / "assemble.json").is_file() and not (out / "done" / "stage1.json").exists()
    ours = sorted(os.listdir(out / "testset" / "reason_edit" / "1-Left-Right"))
    theirs = sorted(os.listdir(os.path.join(recipe_dir, "testset", "reason_edit", "1-Left-Right")))
    assert ours == theirs  # the same layout, other scenes (the test set follows the seed)
    assert (out / "testset" / "reason_edit" / "1-Left-Right" / ours[0]).read_bytes() != open(
        os.path.join(recipe_dir, "testset", "reason_edit", "1-Left-Right", theirs[0]), "rb").read()

    # another LLaVA-tiny budget: only the llava step trains again, the editors are still taken
    caplog.clear()
    caplog.set_level(logging.INFO)
    s2 = tmp_path / "s2"
    assert main(["--config", saved, "--set", "seed=2", "--set", "llava.steps=3", "--output", str(s2),
                 "--pretrained-from", recipe_dir, "--steps", "llava,assemble"]) == 0
    assert "llava (llava.steps is 3 here but 2 there)" in caplog.text
    assert "reused_from" not in json.loads((s2 / "done" / "llava.json").read_text())
    assert json.loads((s2 / "done" / "ip2p.json").read_text())["reused_from"] == recipe_dir
    assert json.loads((s2 / "llava" / "train_time.json").read_text())["step"] == 3
    assert main(["--output", str(tmp_path / "s3"), "--pretrained-from", str(tmp_path / "nothing")]) == 2
    assert "neither a recipe run" in caplog.text and "Traceback" not in caplog.text


def test_a_new_run_can_start_from_the_shipped_parts(recipe_dir, tmp_path, caplog):
    """``--pretrained-from DIR`` with a shipped folder (``--ship DIR``, like ``checkpoints``): its VAE, IP2P-tiny,
    fair IP2P-tiny and LLaVA-tiny are taken (the control, which only starts IP2P-tiny, is then not needed), and the
    run goes on to a model card that says where the parts came from; another LLaVA-tiny budget trains it here."""
    from helpers import load_script

    from smartedit.shapes.recipe import model_card

    shipped = tmp_path / "shipped"
    assert set(ship(recipe_dir, str(shipped))) == {"smartedit-tiny", "ip2p-tiny", "ip2p-tiny-fair", "llava-tiny"}
    assert "LLaVA-tiny" in (shipped / "llava-tiny" / "README.md").read_text()
    main = load_script("train/shapes_recipe.py").main
    out = tmp_path / "new"
    assert main(["--config", os.path.join(recipe_dir, "recipe.json"), "--output", str(out),
                 "--pretrained-from", str(shipped), "--steps", "vae,decoder,vision,llava,control,ip2p,assemble"]) == 0
    for step in ("vae", "decoder", "vision", "llava", "ip2p", "ip2p_mix"):
        assert json.loads((out / "done" / f"{step}.json").read_text())["reused_from"] == str(shipped), step
    assert "skipped" in json.loads((out / "done" / "control.json").read_text()) and not (out / "control").exists()
    for name in ("unet", "vae", "text_encoder"):
        assert (out / "ip2p" / "pipeline" / name).is_dir()
    a = (shipped / "ip2p-tiny" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert (out / "ip2p" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == a
    weights = (shipped / "llava-tiny" / "mllm.safetensors").read_bytes()
    assert (out / "llava" / "mllm.safetensors").read_bytes() == weights
    assert (out / "init" / "model.safetensors").is_file()
    # and on to the end with no --config: the run goes on with the config it was started with, even with --force
    # (which re-runs steps; it used to put the built-in budgets in the run's place)
    started = (out / "recipe.json").read_text()
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert main(["--output", str(out), "--steps", "assemble", "--force"]) == 0
    assert (out / "recipe.json").read_text() == started and "going on with" in caplog.text
    assert main(["--output", str(out)]) == 0
    assert sorted(os.listdir(out / "eval")) == ["identity", "ip2p", "ip2p_mix", "mllmsd", "plainly", "smartedit"]
    ablation = json.loads((out / "ablation.json").read_text())
    assert "control" not in ablation["models"] and "smartedit" in ablation["models"]
    card = model_card(str(out))
    assert f"(taken from `{shipped}`)" in card and "nan" not in card and "LLaVA-tiny probe" in card
    # shipping that run ships its SmartEdit-tiny; the LLaVA-tiny it took keeps the folder and card it came from
    assert "llava-tiny" not in ship(str(out), str(tmp_path / "again"))

    other = tmp_path / "other"
    assert main(["--config", os.path.join(recipe_dir, "recipe.json"), "--set", "llava.steps=3", "--output",
                 str(other), "--pretrained-from", str(shipped), "--steps", "llava"]) == 0
    assert "reused_from" not in json.loads((other / "done" / "llava.json").read_text())
    assert json.loads((other / "done" / "ip2p.json").read_text())["reused_from"] == str(shipped)


def test_stage1_can_align_to_the_instruction_said_plainly(recipe_dir, tmp_path, caplog):
    """``--set stage1_explicit=true`` on the same pretrained parts: stage 1 reads ``shapes:explicit_instruction``
    and its alignment probe scores against the plain wording; ``stage1_focus`` draws a share of its prompts from one
    category alone (its own source beside the uniform one). Without the grounded edit prompt, or with a focus on an
    unknown kind or a share out of range, it is refused with one message naming every bad field."""
    from helpers import load_script

    main = load_script("train/shapes_recipe.py").main
    out = tmp_path / "explicit"
    saved = os.path.join(recipe_dir, "recipe.json")
    assert main(["--config", saved, "--set", "stage1_explicit=true", "--set", "stage1_focus.1-Left-Right=0.3",
                 "--output", str(out), "--pretrained-from", recipe_dir, "--steps", "assemble,stage1"]) == 0
    data = json.loads((out / "configs" / "stage1.json").read_text())["data"]
    assert data["sources"]["cc12m"].startswith("shapes:explicit_instruction:")
    assert data["sources"]["left_right"].startswith("shapes:explicit_instruction/1-Left-Right:")
    assert data["ratios"] == {"cc12m": pytest.approx(0.7), "left_right": 0.3}
    alignment = json.loads((out / "done" / "stage1.json").read_text())["alignment"]
    assert set(alignment["per_family"]) == {"simple", "perception", "understanding", "reasoning"}
    assert "1-Left-Right" in alignment["per_category"]
    caplog.clear()
    assert main(["--config", saved, "--set", "stage1_explicit=true", "--set", "stage1_grounded=false",
                 "--set", "stage1_focus.2-Size=0.2", "--set", "stage1_focus.simple=1.5",
                 "--output", str(tmp_path / "bad"), "--steps", "assemble"]) == 2
    assert "stage1_explicit needs stage1_grounded" in caplog.text and "Traceback" not in caplog.text
    assert "stage1_focus.2-Size: unknown edit kind" in caplog.text
    assert "stage1_focus.simple must be a share between 0 and 1, got 1.5" in caplog.text


def test_edit_prompts_can_be_answered_with_the_instruction_said_plainly(recipe_dir, tmp_path, caplog):
    """``--set edit_reply=true``: stage 1's and stage 2's edit prompts are answered with the instruction said
    plainly before the ``<img_i>`` tokens (``:reply`` sources; chat keeps its own answers), the model is saved to
    decode its reply at inference, and the stage-1 probe reports how often the reply is that wording. Without the
    grounded edit prompt it is refused."""
    from helpers import load_script

    from smartedit.shapes.recipe import _Paths, stage_experiment

    main = load_script("train/shapes_recipe.py").main
    out = tmp_path / "reply"
    saved = os.path.join(recipe_dir, "recipe.json")
    assert main(["--config", saved, "--set", "edit_reply=true", "--set", "stage1_explicit=true", "--output", str(out),
                 "--pretrained-from", recipe_dir, "--steps", "assemble,stage1"]) == 0
    assert json.loads((out / "init" / "config.json").read_text())["mllm"]["writes_reply"] is True
    assert json.loads((out / "configs" / "stage1.json").read_text())["also_train"] == ["llm", "token_rows"]
    stage1 = json.loads((out / "configs" / "stage1.json").read_text())["data"]["sources"]
    assert stage1["cc12m"].startswith("shapes:explicit_instruction:") and stage1["cc12m"].endswith(":reply")
    alignment = json.loads((out / "done" / "stage1.json").read_text())["alignment"]
    assert 0 <= alignment["reply_accuracy"] <= 1 and "reply_accuracy" in alignment["per_category"]["1-Left-Right"]
    # through stage 2 and the evaluation: every scored sample of the MLLM models records what the model said, and
    # the report gives how often that was the instruction said plainly, per category
    assert main(["--output", str(out), "--steps", "stage2a,stage2b,testset,evaluate,report"]) == 0
    samples = json.loads((out / "eval" / "smartedit" / "samples.json").read_text())["samples"]
    assert samples and all(isinstance(x["meta"]["reply"], str) and "<img_" not in x["meta"]["reply"] for x in samples)
    replies = json.loads((out / "ablation.json").read_text())["replies"]
    assert set(replies) == {"mllmsd", "smartedit"} and all(0 <= v <= 1 for v in replies["smartedit"].values())
    assert "1-Left-Right" in replies["smartedit"] and "Replies said plainly" in (out / "ablation.md").read_text()
    config = RecipeConfig.from_dict({**json.loads(open(saved).read()), "edit_reply": True})
    stage2 = stage_experiment(config, "stage2a", _Paths(str(out))).data.sources
    assert stage2["llava_instruct"].startswith("shapes:chat:") and not stage2["llava_instruct"].endswith(":reply")
    assert all(spec.endswith(":reply") for name, spec in stage2.items() if name != "llava_instruct")
    caplog.clear()
    assert main(["--config", saved, "--set", "edit_reply=true", "--set", "stage1_grounded=false",
                 "--output", str(tmp_path / "bad"), "--steps", "assemble"]) == 2
    assert "edit_reply needs stage1_grounded" in caplog.text and "Traceback" not in caplog.text


def test_stage1_can_keep_llava_tinys_chat(tmp_path, caplog):
    """``--set stage1_chat=0.2``: a fifth of stage 1 is LLaVA-tiny's chat (LM loss only), the rest the edit prompts
    (and any ``stage1_focus``); shares that leave no edit prompts, or a share out of range, are one clear error."""
    from helpers import load_script

    from smartedit.shapes.recipe import _Paths, stage_experiment

    config = RecipeConfig.from_dict({"stage1_grounded": True, "stage1_explicit": True, "edit_reply": True,
                                     "stage1_chat": 0.2, "stage1_focus": {"1-Left-Right": 0.3}})
    data = stage_experiment(config, "stage1", _Paths(str(tmp_path / "run"))).data
    assert data.sources["llava_instruct"].startswith("shapes:chat:")
    assert data.ratios == {"cc12m": pytest.approx(0.5), "left_right": 0.3, "llava_instruct": 0.2}
    main = load_script("train/shapes_recipe.py").main
    for value, message in (("1.5", "stage1_chat must be a share between 0 and 1, got 1.5"),
                           ("0.8", "stage1_chat + stage1_focus add up to 1.1; keep them below 1")):
        caplog.clear()
        assert main(["--set", f"stage1_chat={value}", "--set", "stage1_focus.1-Left-Right=0.3",
                     "--output", str(tmp_path / "bad"), "--steps", "assemble"]) == 2
        assert message in caplog.text and "Traceback" not in caplog.text
