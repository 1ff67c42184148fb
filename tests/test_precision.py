"""Precision where it matters: the noise schedule and the diffusion target in float32 with half-precision latents,
buffers that were float32 in training stay float32 under ``model.to(half)``, and the float16 VAE overflow guard.
The ``gpu`` tests repeat the edit in bfloat16 / float16 on CUDA (skipped without one)."""

import pytest
import torch

from smartedit.config import preset
from smartedit.model import FLOAT32_BUFFERS, SmartEditModel

HALF = (torch.bfloat16, torch.float16)


@pytest.fixture
def model():
    return SmartEditModel.from_config(preset("tiny"), seed=0)


def test_noise_schedule_is_float32_with_bf16_latents(model):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(6, 4, 8, 8, generator=g).to(torch.bfloat16)
    noise = torch.randn(6, 4, 8, 8, generator=g)
    t = torch.tensor([0, 1, 2, 10, 30, 49])
    acp = model.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1).double()
    exact = acp.sqrt() * latents.double() + (1 - acp).sqrt() * noise.double()

    # what diffusers does with bf16 samples: alphas_cumprod in bf16, so t = 0 and 1 get no noise at all
    native = model.noise_scheduler.add_noise(latents, noise.to(torch.bfloat16), t).double()
    assert torch.equal(native[:2], latents[:2].double())

    noisy = model.add_noise(latents, noise, t)
    assert noisy.dtype == torch.float32
    torch.testing.assert_close(noisy.double(), exact, rtol=0, atol=1e-6)
    # the noise scale per timestep matches float32's (t = 0 and 1 included)
    scale = ((noisy.double() - acp.sqrt() * latents.double()) / noise.double()).flatten(1).median(1).values
    torch.testing.assert_close(scale, (1 - acp).sqrt().flatten(), rtol=1e-4, atol=0)
    assert (scale[:2] > 0.02).all()

    target = model.diffusion_target(latents, noise, t)
    assert target.dtype == torch.float32 and torch.equal(target, noise)


def test_v_target_is_float32(tiny_config):
    model = SmartEditModel.from_config(tiny_config.replace(**{"scheduler.prediction_type": "v_prediction"}))
    latents = torch.randn(2, 4, 8, 8).to(torch.bfloat16)
    noise = torch.randn(2, 4, 8, 8)
    t = torch.tensor([0, 1])
    v = model.diffusion_target(latents, noise, t)
    acp = model.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert v.dtype == torch.float32
    torch.testing.assert_close(v, acp.sqrt() * noise - (1 - acp).sqrt() * latents.float())


@pytest.mark.parametrize("dtype", HALF)
def test_float32_buffers_stay_float32_under_half_casts(model, dtype):
    before = {n: b.clone() for n, b in model.named_buffers()}
    kept = [n for n in before if n.endswith(FLOAT32_BUFFERS)]
    assert len(kept) == 6  # null text, CLIP mean/std, RoPE inv_freq (+ original), BIM Fourier matrix
    for cast in (lambda m: m.to(dtype), lambda m: m.to("cpu", dtype), lambda m: m.to(dtype=dtype),
                 lambda m: m.half() if dtype == torch.float16 else m.bfloat16()):
        cast(model.float())
        buffers = dict(model.named_buffers())
        for name in kept:
            assert buffers[name].dtype == torch.float32 and torch.equal(buffers[name], before[name]), name
        assert model.unet.dtype == dtype and model.mllm.llm.lm_head.weight.dtype == dtype
        assert model.bim.text_in.weight.dtype == dtype
    model.float()
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_rope_phase_of_a_half_model_is_the_float32_one():
    """LLaMA's rotary embedding computes cos/sin from ``inv_freq``: kept in float32, positions 300–350 get the float32
    phases (in bfloat16 ``inv_freq`` itself is rounded: off by about 0.4 rad there at the 7B head size, 128)."""
    cfg = preset("tiny", **{"mllm.hidden_size": 512, "mllm.num_attention_heads": 4, "mllm.num_key_value_heads": 4})
    fp32 = SmartEditModel.from_config(cfg, seed=0)
    half = SmartEditModel.from_config(cfg, seed=0).to(torch.bfloat16)
    x = torch.zeros(1, 1, 512, dtype=torch.bfloat16)
    pos = torch.arange(300, 351)[None]
    rope32 = fp32.mllm.llm.model.rotary_emb
    rope16 = half.mllm.llm.model.rotary_emb
    cos32, _ = rope32(x.float(), pos)
    cos16, _ = rope16(x, pos)
    assert torch.equal(cos16, cos32.to(torch.bfloat16))
    rounded = rope32.inv_freq.to(torch.bfloat16).float()  # what a plain bf16 cast would have used
    error = ((pos[0, :, None] * (rope32.inv_freq - rounded)).abs()).max().item()
    assert error > 0.2  # (the hazard is real at this head size: 128)


def test_bf16_model_trains_and_edits(model, make_batch):
    from smartedit.pipeline import SmartEditPipeline

    model.to(torch.bfloat16).train()
    out = model(make_batch(model, 1), generator=torch.Generator().manual_seed(0))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert model.unet.conv_in.weight.grad is not None
    pipe = SmartEditPipeline(model.eval())
    pipe.set_progress_bar_config(disable=True)
    image = pipe(torch.rand(3, 64, 64), "make the circle blue", num_inference_steps=1, seed=0,
                 output_type="np").images
    assert torch.isfinite(torch.as_tensor(image)).all()


def test_float16_vae_overflow_is_decoded_again_in_float32(model):
    with torch.no_grad():  # a VAE whose activations leave float16's range (the SD VAE does on some latents)
        model.vae.decoder.conv_in.weight.mul_(1e5)
        model.vae.decoder.conv_in.bias.mul_(1e5)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    reference = model.decode_latent(latents)
    model.half()
    model.vae_upcast = "never"
    assert not torch.isfinite(model.decode_latent(latents)).all()
    for mode in ("auto", "always"):
        model.vae_upcast = mode
        image = model.decode_latent(latents)
        assert image.dtype == torch.float32 and model.vae.dtype == torch.float16
        torch.testing.assert_close(image, reference, rtol=0, atol=5e-3)


def test_float32_decode_is_the_plain_vae_decode(model):
    latents = torch.randn(2, 4, 16, 16)
    assert torch.equal(model.decode_latent(latents), model.vae.decode(latents).sample)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", HALF)
def test_cuda_edit_in_half_precision(model, dtype):
    from smartedit.pipeline import SmartEditPipeline

    model.to("cuda", dtype).eval()
    assert model.null_text_embedding.dtype == torch.float32 and model.null_text_embedding.is_cuda
    pipe = SmartEditPipeline(model)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(torch.rand(3, 64, 64), "make the circle blue", num_inference_steps=3, seed=0,
                 output_type="np").images
    assert torch.isfinite(torch.as_tensor(image)).all()
