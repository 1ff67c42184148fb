"""SmartEditPipeline as a diffusers user drives it: from_pretrained / .to / the InstructPix2Pix argument names / a step
callback / num_images_per_prompt / save_pretrained → from_pretrained (bit-exact), memory switches, LLM quantization.

Runs on the shipped SmartEdit-tiny (64 px, DDIM), so every edit here takes well under a second of compute."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

SHIPPED = "checkpoints/smartedit-tiny"
EXAMPLE = "checkpoints/examples/shapes.png"
PROMPT = "remove the red circle"


@pytest.fixture(scope="module")
def pipe():
    from smartedit.pipeline import SmartEditPipeline

    p = SmartEditPipeline.from_pretrained(SHIPPED)
    p.set_progress_bar_config(disable=True)
    return p


def test_from_pretrained_to_and_the_ip2p_call(pipe, one_torch_thread):
    image = Image.open(EXAMPLE).convert("RGB")
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
    steps = []

    def on_step_end(p, i, t, tensors):
        assert p is pipe and set(tensors) == {"latents", "image_latents"}
        steps.append(int(t))
        return tensors

    out = pipe(PROMPT, image=image, num_inference_steps=4, guidance_scale=1.5, image_guidance_scale=1.0,
               num_images_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
               callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents", "image_latents"])
    assert len(out.images) == 2 and all(im.size == image.size for im in out.images)
    assert steps == [int(t) for t in pipe.scheduler.timesteps] and pipe.num_timesteps == 4
    # the two samples of one prompt are the two seeds' single edits (to float rounding of a batch of 2 vs 1)
    both = pipe(PROMPT, image=image, num_inference_steps=4, guidance_scale=1.5, image_guidance_scale=1.0,
                num_images_per_prompt=2, seed=[0, 1], output_type="np").images
    assert not np.array_equal(both[0], both[1])
    for k, seed in enumerate((0, 1)):
        single = pipe(PROMPT, image=image, num_inference_steps=4, guidance_scale=1.5, image_guidance_scale=1.0,
                      generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
        assert np.abs(single - both[k]).max() < 1e-4
    # output types as in diffusers
    pt = pipe(PROMPT, image=image, num_inference_steps=2, seed=0, output_type="pt").images
    npy = pipe(PROMPT, image=image, num_inference_steps=2, seed=0, output_type="np").images
    lat = pipe(PROMPT, image=image, num_inference_steps=2, seed=0, output_type="latent").images
    assert pt.shape == (1, 3, 128, 128) and npy.shape == (1, 128, 128, 3) and lat.shape[::2] == (1, 16)
    assert torch.allclose(pt[0].permute(1, 2, 0), torch.from_numpy(npy[0]))
    (tuple_out,) = pipe(PROMPT, image=image, num_inference_steps=2, seed=0, return_dict=False)
    assert isinstance(tuple_out[0], Image.Image)


def test_a_callback_can_stop_and_change_the_latents(pipe, one_torch_thread):
    seen = []

    def stop_after_two(p, i, t, tensors):
        seen.append(i)
        if i == 1:
            p._interrupt = True
        return {"latents": tensors["latents"] * 0}

    out = pipe(PROMPT, image=EXAMPLE, num_inference_steps=5, seed=0, output_type="latent",
               callback_on_step_end=stop_after_two)
    assert seen == [0, 1] and torch.count_nonzero(out.images) == 0


def test_dtype_round_trip_and_bf16_edit(one_torch_thread):
    from smartedit.pipeline import SmartEditPipeline

    p = SmartEditPipeline.from_pretrained(SHIPPED, torch_dtype=torch.bfloat16)
    p.set_progress_bar_config(disable=True)
    assert p.dtype == torch.bfloat16
    assert p.to(torch.float32) is p and p.dtype == torch.float32
    p.to("cpu", torch.bfloat16)
    assert p.dtype == torch.bfloat16 and p.device.type == "cpu"
    edited = p(PROMPT, image=EXAMPLE, num_inference_steps=2, seed=0, output_type="np").images[0]
    assert np.isfinite(edited).all() and edited.shape == (128, 128, 3)


def test_save_pretrained_round_trips_bit_exactly(pipe, tmp_path, one_torch_thread):
    from diffusers import DPMSolverMultistepScheduler

    from smartedit.pipeline import SmartEditPipeline

    pipe_dpm = SmartEditPipeline(pipe.model, DPMSolverMultistepScheduler.from_config(pipe.scheduler.config))
    pipe_dpm.set_progress_bar_config(disable=True)
    before = pipe_dpm(PROMPT, image=EXAMPLE, seed=3, output_type="np").images
    pipe_dpm.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "SmartEditPipeline" and index["scheduler"] == ["diffusers",
                                                                                   "DPMSolverMultistepScheduler"]
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["sampling"] == {"num_inference_steps": 20, "guidance_scale": 1.5, "image_guidance_scale": 1.0}
    again = SmartEditPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    assert type(again.scheduler).__name__ == "DPMSolverMultistepScheduler"
    after = again(PROMPT, image=EXAMPLE, seed=3, output_type="np").images
    assert np.array_equal(before, after)


def test_sampling_defaults_come_from_the_model_folder(pipe, one_torch_thread):
    with open(os.path.join(SHIPPED, "recipe.json"), encoding="utf-8") as f:
        tuned = json.load(f)["eval"]
    assert pipe.sampling_defaults == {"num_inference_steps": tuned["steps"], "guidance_scale": tuned["text_guidance"],
                                      "image_guidance_scale": tuned["image_guidance"]}
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    default = pipe(PROMPT, image=EXAMPLE, seed=0, output_type="np").images
    explicit = pipe(PROMPT, image=EXAMPLE, seed=0, num_inference_steps=20, guidance_scale=1.5,
                    image_guidance_scale=1.0, output_type="np").images
    assert np.array_equal(default, explicit)
    # the older argument names still work
    legacy = pipe(EXAMPLE, PROMPT, seed=0, text_guidance_scale=1.5, output_type="np").images
    assert np.array_equal(default, legacy)


def test_vae_slicing_and_tiling_switches(pipe, one_torch_thread):
    plain = pipe([EXAMPLE, EXAMPLE], PROMPT, num_inference_steps=2, seed=[0, 1], output_type="np").images
    pipe.enable_vae_slicing()
    try:
        sliced = pipe([EXAMPLE, EXAMPLE], PROMPT, num_inference_steps=2, seed=[0, 1], output_type="np").images
    finally:
        pipe.disable_vae_slicing()
    assert np.abs(plain - sliced).max() < 1e-5
    pipe.enable_vae_tiling()
    pipe.disable_vae_tiling()


def test_model_cpu_offload_runs_every_module_on_the_compute_device(pipe, monkeypatch, one_torch_thread):
    """A stand-in offload device: while a component is offloaded its ``device`` reads ``meta``, so any input moved
    to an offloaded module's device (instead of the compute device) lands on meta and fails the check below; every
    module call checks that its component is resident and its tensor inputs are on the compute device."""
    from smartedit.pipeline import SmartEditPipeline

    reference = pipe(PROMPT, image=EXAMPLE, num_inference_steps=2, seed=0, output_type="np").images
    p = SmartEditPipeline(pipe.model, pipe.scheduler)
    p.set_progress_bar_config(disable=True)
    model = p.model
    parts = {"mllm": model.mllm, "qformer": model.qformer, "bim": model.bim, "unet": model.unet, "vae": model.vae}
    resident: set[str] = set()
    running = p._running

    def tracking_running(*modules):
        names = [n for n, m in parts.items() if any(m is x for x in modules)]
        ctx = running(*modules)

        class Tracked:
            def __enter__(self):
                ctx.__enter__()
                resident.update(names)

            def __exit__(self, *exc):
                resident.difference_update(names)
                return ctx.__exit__(*exc)

        return Tracked()

    monkeypatch.setattr(p, "_running", tracking_running)
    for cls in {type(model.unet), type(model.vae)}:
        real = cls.device

        def device(self, real=real):
            name = next((n for n, m in parts.items() if m is self), None)
            return real.fget(self) if name is None or name in resident else torch.device("meta")

        monkeypatch.setattr(cls, "device", property(device))
    calls = []

    def check(name):
        def hook(module, args, kwargs):
            assert name in resident, f"{name} ran while offloaded"
            for t in [*args, *kwargs.values()]:
                if isinstance(t, torch.Tensor):
                    assert t.device == p._execution_device, (name, t.device)
            calls.append(name)
        return hook

    hooked = [*[(n, m) for n, m in parts.items() if n != "vae"], ("vae", model.vae.encoder), ("vae", model.vae.decoder)]
    handles = [m.register_forward_pre_hook(check(n), with_kwargs=True) for n, m in hooked if m is not None]
    try:
        p.enable_model_cpu_offload(device="cpu")
        assert p._execution_device == torch.device("cpu")
        out = p(PROMPT, image=EXAMPLE, num_inference_steps=2, seed=0, output_type="np").images
    finally:
        for h in handles:
            h.remove()
        p.disable_model_cpu_offload()
    assert np.array_equal(out, reference)
    assert {"mllm", "qformer", "unet", "vae"} <= set(calls)
    assert calls.count("vae") >= 2  # the source encoded and the edit decoded


def test_llm_offload_keeps_the_mllm_off_the_device_between_edits(one_torch_thread):
    from smartedit.pipeline import SmartEditPipeline

    p = SmartEditPipeline.from_pretrained(SHIPPED)
    p.set_progress_bar_config(disable=True)
    reference = p(PROMPT, image=EXAMPLE, num_inference_steps=2, seed=0, output_type="np").images
    p.enable_llm_offload("cpu")
    out = p(PROMPT, image=EXAMPLE, num_inference_steps=2, seed=0, output_type="np").images
    assert np.array_equal(out, reference)


def _llm_linear_bytes(model) -> int:
    """Bytes of the LLM decoder's linear weights (bitsandbytes layers: packed weight + scales)."""
    import torch.nn as nn

    total = 0
    for m in model.mllm.llm.get_decoder().modules():
        if isinstance(m, nn.Linear) or type(m).__name__ in ("Linear8bitLt", "Linear4bit"):
            w = getattr(m, "base_layer", m).weight
            total += w.numel() * w.element_size()
            state = getattr(w, "quant_state", None)
            if state is not None:
                total += state.absmax.numel() * state.absmax.element_size()
            scb = getattr(w, "SCB", None)
            if scb is not None:
                total += scb.numel() * scb.element_size()
    return total


@pytest.mark.parametrize("mode, factor, tolerance", [("int8", 4, 0.01), ("int4", 8, 0.03)])
def test_quantized_llm_edits_close_to_the_full_one(pipe, mode, factor, tolerance, one_torch_thread):
    """bitsandbytes 8-bit / NF4 LLM weights on this CPU: the edit stays close to the unquantized model's and the
    LLM's linear weights shrink by about 4x / 8x from float32."""
    pytest.importorskip("bitsandbytes")
    from smartedit.pipeline import SmartEditPipeline

    full = pipe(PROMPT, image=EXAMPLE, seed=0, output_type="np").images
    base = SmartEditPipeline.from_pretrained(SHIPPED)
    base_bytes = _llm_linear_bytes(base.model)
    q = SmartEditPipeline.from_pretrained(SHIPPED, llm_quantization=mode)
    q.set_progress_bar_config(disable=True)
    assert q.model.llm_quantization.startswith("int8" if mode == "int8" else "4bit")
    ratio = base_bytes / _llm_linear_bytes(q.model)
    assert factor * 0.85 <= ratio <= factor * 1.05, ratio
    out = q(PROMPT, image=EXAMPLE, seed=0, output_type="np").images
    assert np.abs(out - full).mean() < tolerance, np.abs(out - full).mean()
    with pytest.raises(RuntimeError, match="quantized"):
        q.save_pretrained("never-written")
    assert not os.path.exists("never-written")


def test_diffusion_pipeline_loader_on_a_model_folder(tmp_path, pipe):
    """diffusers resolves ``_class_name`` only among its own classes (or runs a pipeline .py file from the folder or
    the hub, which this project never does): DiffusionPipeline.from_pretrained cannot build SmartEditPipeline, and the
    folder says which loader to use."""
    from diffusers import DiffusionPipeline

    pipe.save_pretrained(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_smartedit_loader"] == "smartedit.pipeline.SmartEditPipeline.from_pretrained"
    with pytest.raises(AttributeError, match="SmartEditPipeline"):
        DiffusionPipeline.from_pretrained(tmp_path / "m")


def test_info_prints_the_7b_memory_table(capsys):
    from smartedit.cli import main

    assert main(["info", "--preset", "7b"]) == 0
    text = capsys.readouterr().out
    assert "GPU memory of the weights during one edit" in text
    rows = {tuple(line.split()[:2]): [float(v) for v in line.split()[2:5]]
            for line in text.splitlines() if line.split()[:1] in (["float32"], ["bfloat16"], ["float16"])}
    assert set(rows) == {(d, q) for d in ("float32", "bfloat16", "float16") for q in ("none", "int8", "int4")}
    none, llm, model = rows[("bfloat16", "none")]
    assert 15.5 < none < 16.5 and model < llm < none  # 8.08 B parameters in 2 bytes
    assert rows[("bfloat16", "int4")][0] < rows[("bfloat16", "int8")][0] < none
    assert 31 < rows[("float32", "none")][0] < 33
