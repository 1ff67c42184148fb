"""SD3's MMDiT as the generator (UltraEdit's route): the denoising loop against one written with diffusers' own
transformer, scheduler and VAE the way UltraEdit's SD3 InstructPix2Pix pipeline runs them; the flow-matching
training objective pinned by an oracle; a tiny SD3 (InstructPix2Pix) diffusers folder read by ``smartedit
assemble``; the 7B-class presets' sizes. Stage 1 → 2a → 2b → edit for LLaVA + SD3 and Qwen2.5-VL + SD3:
tests/test_backbones.py."""

import json
import os

import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from smartedit.config import preset
from smartedit.model import SmartEditModel


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    pass


def _randomised(model: SmartEditModel, seed: int = 1) -> SmartEditModel:
    """Zero-initialised heads (pooled projection, widened patch channels) made random: parity then covers them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.unet.pooled_proj.weight.normal_(0, 0.05, generator=g)
        model.unet.pooled_proj.bias.normal_(0, 0.05, generator=g)
        model.unet.conv_in.weight.add_(torch.randn(model.unet.conv_in.weight.shape, generator=g) * 0.05)
        model.null_text_embedding.normal_(0, 1, generator=g)
    return model


def test_sd3_denoising_matches_the_sd3_ip2p_loop_with_diffusers_parts():
    """Given the context, SmartEdit's denoising loop and decode equal a loop built from diffusers'
    ``SD3Transformer2DModel.forward``, ``FlowMatchEulerDiscreteScheduler`` and ``AutoencoderKL`` as the SD3
    InstructPix2Pix pipeline uses them: source latent (mode − shift) · scale, an all-zero source latent in the
    unconditional branch, three branches (text+image, image, none), u + s_T (c − i) + s_I (i − u)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from smartedit.pipeline import SmartEditPipeline

    model = _randomised(SmartEditModel.from_config(preset("tiny-sd3", **{"bim.enabled": False}), seed=0).eval())
    pipe = SmartEditPipeline(model)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 64, 64, generator=g)
    context = torch.randn(2, 77, model.config.unet.cross_attention_dim, generator=g)
    start = torch.randn(2, 16, 16, 16, generator=g)
    steps, s_t, s_i = 4, 5.0, 1.5
    with torch.no_grad():
        cond = pipe.encode(image, None, prompt_embeds=context)
        ours = pipe.denoise(cond, steps, s_t, s_i, latents=start.clone())
        ours_pixels = pipe.decode(ours)

        vae, unet = model.vae, model.unet
        scale, shift = vae.config.scaling_factor, vae.config.shift_factor
        image_latents = (vae.encode(image * 2 - 1).latent_dist.mode() - shift) * scale  # [B, 16, h, w]
        image_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
        null = model.null_text_embedding.expand(2, -1, -1)
        embeds = torch.cat([context, null, null])
        pooled = unet.pooled_proj(embeds.mean(dim=1))
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(model.noise_scheduler.config)
        scheduler.set_timesteps(steps)
        latents = start.clone()
        for t in scheduler.timesteps:
            x = torch.cat([torch.cat([latents] * 3), image_latents], dim=1)
            out = SD3Transformer2DModel.forward(unet, hidden_states=x, timestep=t.expand(6),
                                                encoder_hidden_states=embeds, pooled_projections=pooled).sample
            text, img, uncond = out.chunk(3)
            guided = uncond + s_t * (text - img) + s_i * (img - uncond)
            latents = scheduler.step(guided, t, latents, return_dict=False)[0]
        pixels = (vae.decode(latents / scale + shift).sample / 2 + 0.5).clamp(0, 1)
    assert ours.shape == latents.shape == (2, 16, 16, 16)
    assert torch.allclose(ours, latents, atol=1e-5), (ours - latents).abs().max()
    assert torch.allclose(ours_pixels, pixels, atol=1e-5)
    assert (ours - start).abs().mean() > 0.1  # the loop moved the latents


def test_flow_matching_oracle_has_zero_loss(make_batch, monkeypatch):
    """Training: x_t = (1 − σ) x_0 + σ ε with x_0 = (sample − shift) · scale of the TARGET image, the source latent
    (mode − shift) · scale concatenated, the transformer called at t = 1000 σ and trained to predict ε − x_0."""
    cfg = preset("tiny-sd3", **{"cfg_dropout_prob": 0.0, "bim.enabled": False})
    model = SmartEditModel.from_config(cfg, seed=0).eval()
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    batch = make_batch(model, n=2, seed=1)
    scale, shift = cfg.vae.scaling_factor, cfg.vae.shift_factor
    with torch.no_grad():
        src = (model.vae.encode(batch["source_images"]).latent_dist.mode() - shift) * scale
        x0 = (model.vae.encode(batch["target_images"]).latent_dist.mode() - shift) * scale
    seen = {}

    def oracle(unet_input, timesteps, context, spatial=None):
        c = cfg.unet.latent_channels
        noisy, concat = unet_input[:, :c].float(), unet_input[:, c:2 * c].float()
        sigma = (timesteps.float() / cfg.scheduler.num_train_timesteps).view(-1, 1, 1, 1)
        noise = (noisy - (1 - sigma) * x0) / sigma
        seen.update(concat=concat, noise=noise, sigma=sigma)
        return noise - x0

    monkeypatch.setattr(model, "predict", oracle)
    loss = model(batch, generator=torch.Generator().manual_seed(0))["diffusion_loss"]
    assert torch.allclose(seen["concat"], src, atol=1e-5)
    assert seen["noise"].std() > 0.5 and ((seen["sigma"] > 0) & (seen["sigma"] <= 1)).all()
    assert loss.item() < 1e-8, loss.item()
    swapped = dict(batch, source_images=batch["target_images"], target_images=batch["source_images"])
    assert model(swapped, generator=torch.Generator().manual_seed(0))["diffusion_loss"].item() > 1e-4


@pytest.mark.parametrize("in_channels", [32, 16])
def test_assemble_reads_a_tiny_sd3_folder(in_channels, tmp_path):
    """A tiny SD3 InstructPix2Pix folder (transformer taking noisy ‖ source latent) or a plain SD3 text-to-image
    folder (16 channels: widened with zero weights for the source) in diffusers' layout, assembled with the tiny
    LLaVA through ``smartedit assemble``: every transformer and VAE weight as saved, the flow-matching schedule
    and VAE shift carried over; the assembled folder trains (stage 2b, 2 steps) and edits."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from PIL import Image

    from helpers import load_script
    from smartedit.backbones.testing import build_tiny_llava_hf, build_tiny_sd3_ip2p
    from smartedit.cli import main as cli
    from smartedit.model import load_weights
    from smartedit.pipeline import SmartEditPipeline

    sd3 = build_tiny_sd3_ip2p(str(tmp_path / "sd3"), seed=2, in_channels=in_channels)
    index = json.load(open(os.path.join(sd3, "model_index.json")))
    assert index["_class_name"] == "StableDiffusion3InstructPix2PixPipeline" and "transformer" in index
    llava = build_tiny_llava_hf(str(tmp_path / "llava"), seed=5)
    out = str(tmp_path / "assembled")
    assert cli(["assemble", "--llm", llava, "--sd", sd3, "--preset", "tiny-sd3", "--out", out,
                "--dtype", "float32"]) == 0
    pipe = SmartEditPipeline.from_pretrained(out)
    model = pipe.model
    assert (model.config.backbone.generator, model.config.scheduler.prediction_type) == ("sd3", "flow")
    assert model.config.vae.shift_factor == pytest.approx(0.0609) and model.config.scheduler.shift == 3.0
    saved = SD3Transformer2DModel.from_pretrained(sd3, subfolder="transformer").state_dict()
    ours = model.unet.state_dict()
    for key, value in saved.items():
        if key == "pos_embed.proj.weight":
            assert torch.equal(ours[key][:, :in_channels], value) and not ours[key][:, in_channels:].any()
        else:
            assert torch.equal(ours[key], value), key
    assert ours["pos_embed.proj.weight"].shape[1] == 32
    vae = AutoencoderKL.from_pretrained(sd3, subfolder="vae").state_dict()
    assert all(torch.equal(model.vae.state_dict()[k], v) for k, v in vae.items())
    trained = str(tmp_path / "stage2b")
    assert load_script("train/stage2_smartedit.py").main(
        ["--preset", "tiny", "--init", out, "--output", trained, "--max-steps", "2", "--set", "precision=fp32",
         "--set", "log.progress=false"]) == 0
    exported = load_weights(os.path.join(trained, "model"))  # (stage 2b adds LoRA to the LLM)
    assert {k for k in exported if k.startswith("unet.")} == {k for k in model.state_dict() if k.startswith("unet.")}
    assert not torch.equal(exported["unet.pos_embed.proj.weight"], model.state_dict()["unet.pos_embed.proj.weight"])
    pipe = SmartEditPipeline.from_pretrained(os.path.join(trained, "model"))
    pipe.set_progress_bar_config(disable=True)
    edited = pipe(prompt="make it red", image=Image.new("RGB", (40, 40), (20, 40, 200)), num_inference_steps=2,
                  seed=0, output_type="np").images
    assert edited.shape == (1, 40, 40, 3)


def test_sd3_presets_count_the_published_sizes(capsys):
    """The 7B-class SD3 pairs: the transformer is SD3-medium's 2.03 B parameters (+ the pooled projection), the VAE
    SD3's 16-channel one; `smartedit info` prints them."""
    from smartedit.cli import main as cli
    from smartedit.info import report

    for name in ("llava1.5-7b+sd3", "qwen2.5vl-7b+sd3"):
        counts = report(preset(name))["components"]
        pooled = 4096 * 2048 + 2048
        assert abs(counts["unet"] - pooled - 2_028_328_000) < 0.01 * 2_028_328_000, counts["unet"]
        assert preset(name).qformer.hidden_size == 4096 and preset(name).vae.latent_channels == 16
    assert cli(["info", "--preset", "qwen2.5vl-7b+sd3"]) == 0
    assert "sd3" in capsys.readouterr().out


@pytest.mark.parametrize("damage, says", [("no_vae", "vae/config.json is missing"),
                                          ("bad_json", "is not valid JSON"),
                                          ("truncated", "cannot read the SD3 weights"),
                                          ("dynamic_shift", "dynamic shifting")])
def test_assemble_reports_a_broken_sd3_folder(damage, says, tmp_path, capsys):
    """A broken SD3 folder is one `error:` line naming what is wrong, and nothing is written."""
    import shutil

    from smartedit.backbones.testing import build_tiny_llava_hf, build_tiny_sd3_ip2p
    from smartedit.cli import main as cli

    bad = tmp_path / "sd3"
    build_tiny_sd3_ip2p(str(bad))
    llava = build_tiny_llava_hf(str(tmp_path / "llava"))
    capsys.readouterr()
    if damage == "no_vae":
        shutil.rmtree(bad / "vae")
    elif damage == "bad_json":
        (bad / "transformer" / "config.json").write_text("{broken")
    elif damage == "truncated":
        weights = bad / "transformer" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        config = bad / "scheduler" / "scheduler_config.json"
        config.write_text(json.dumps(dict(json.loads(config.read_text()), use_dynamic_shifting=True)))
    assert cli(["assemble", "--llm", llava, "--sd", str(bad), "--preset", "tiny-sd3", "--out",
                str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and says in err[0], err
    assert not (tmp_path / "out").exists()
