"""The diffusion training objective, pinned: which latent is noised (the target's, or the target − source change),
which is concatenated on the UNet's input channels (the source's), and what the UNet is trained to predict for
each ``prediction_type``. An oracle UNet that knows the true target latent gets zero loss only if all three hold;
swapping source and target, or predicting the latent where the noise is due, makes the loss large."""

import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from smartedit.config import preset
from smartedit.model import SmartEditModel


def _expected_target(kind, scheduler, x0, noise, t):
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    return x0


@pytest.mark.parametrize("diffuse", ["target", "change"])
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_oracle_unet_has_zero_loss(kind, diffuse, make_batch, monkeypatch):
    cfg = preset("tiny", **{"scheduler.prediction_type": kind, "scheduler.diffuse": diffuse,
                            "cfg_dropout_prob": 0.0})
    model = SmartEditModel.from_config(cfg, seed=0).eval()
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    batch = make_batch(model, n=2, seed=1)
    with torch.no_grad():
        src = model.encode_latent(batch["source_images"])  # [B, C, h, w] unscaled
        tgt = model.encode_latent(batch["target_images"])
    scale = cfg.vae.scaling_factor
    x0 = (tgt - src) * scale if diffuse == "change" else tgt * scale  # what must be noised
    alphas = model.noise_scheduler.alphas_cumprod
    seen = {}

    def oracle(unet_input, timesteps, context, spatial=None):
        c = cfg.unet.latent_channels
        noisy, concat = unet_input[:, :c].float(), unet_input[:, c:2 * c].float()
        seen["concat"] = concat
        a = alphas.to(noisy.device)[timesteps].float().view(-1, 1, 1, 1)
        noise = (noisy - a.sqrt() * x0) / (1 - a).sqrt()  # the noise, if x0 is what was noised
        seen["noise"] = noise
        return _expected_target(kind, model.noise_scheduler, x0, noise, timesteps)

    monkeypatch.setattr(model, "predict", oracle)
    loss = model(batch, generator=torch.Generator().manual_seed(0))["diffusion_loss"]
    assert torch.allclose(seen["concat"], src, atol=1e-5)  # the SOURCE latent is concatenated
    assert not torch.allclose(seen["concat"], tgt, atol=1e-3)
    assert seen["noise"].std() > 0.5  # a real noise draw came back out, not a leftover of a wrong x0
    assert loss.item() < 1e-8, loss.item()


@pytest.mark.parametrize("kind", ["epsilon", "sample"])
def test_a_wrong_objective_is_caught(kind, make_batch, monkeypatch):
    """The same oracle against a model that noises the SOURCE instead of the target: the loss is far from 0."""
    cfg = preset("tiny", **{"scheduler.prediction_type": kind, "cfg_dropout_prob": 0.0})
    model = SmartEditModel.from_config(cfg, seed=0).eval()
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    batch = make_batch(model, n=2, seed=1)
    with torch.no_grad():
        tgt = model.encode_latent(batch["target_images"]) * cfg.vae.scaling_factor
    alphas = model.noise_scheduler.alphas_cumprod

    def oracle(unet_input, timesteps, context, spatial=None):
        noisy = unet_input[:, :cfg.unet.latent_channels].float()
        a = alphas[timesteps].float().view(-1, 1, 1, 1)
        noise = (noisy - a.sqrt() * tgt) / (1 - a).sqrt()
        return _expected_target(kind, model.noise_scheduler, tgt, noise, timesteps)

    monkeypatch.setattr(model, "predict", oracle)
    swapped = dict(batch, source_images=batch["target_images"], target_images=batch["source_images"])
    loss = model(swapped, generator=torch.Generator().manual_seed(0))["diffusion_loss"]
    assert loss.item() > 1e-5, loss.item()  # the right objective scores < 1e-8 above
