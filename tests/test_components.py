"""UNet widening and hook, BIM maths, Q-Former, CFG dropout and guidance."""

import math
import re

import pytest
import torch
from diffusers import UNet2DConditionModel

from smartedit.bim import BidirectionalInteraction, GridPositionalEncoding
from smartedit.cfg import apply_dropout, combine_guidance, guidance_branches, sample_dropout
from smartedit.config import BIMConfig, QFormerConfig, preset
from smartedit.qformer import SmartEditQFormer
from smartedit.unet import ConvInResidual, build_unet, widen_conv_in


def _unet4():
    cfg = preset("tiny").unet
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4,
                                down_block_types=cfg.down_block_types, up_block_types=cfg.up_block_types,
                                block_out_channels=cfg.block_out_channels, layers_per_block=1,
                                cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8)


def test_widen_conv_in_copies_weight_and_bias_and_zeroes_new_channels():
    unet = _unet4()
    old_w, old_b = unet.conv_in.weight.detach().clone(), unet.conv_in.bias.detach().clone()
    x = torch.randn(2, 4, 16, 16)
    t = torch.tensor([3, 700])
    ctx = torch.randn(2, 77, 64)
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=ctx).sample
    widen_conv_in(unet, 12)
    assert unet.conv_in.in_channels == 12 and unet.config.in_channels == 12
    assert torch.equal(unet.conv_in.weight[:, :4], old_w) and torch.equal(unet.conv_in.bias, old_b)
    assert torch.count_nonzero(unet.conv_in.weight[:, 4:]) == 0
    with torch.no_grad():
        after = unet(torch.cat([x, torch.randn(2, 8, 16, 16)], 1), t, encoder_hidden_states=ctx).sample
    assert torch.equal(before, after)
    with pytest.raises(ValueError, match="narrow"):
        widen_conv_in(unet, 8)


def test_conv_in_residual_hook_adds_only_while_active():
    unet = build_unet(preset("tiny").unet)
    hook = ConvInResidual(unet)
    x = torch.randn(1, 8, 16, 16)
    residual = torch.randn(1, 32, 16, 16)
    conv_out = unet.conv_in(x)
    with hook.active(residual):
        assert torch.equal(unet.conv_in(x), conv_out + residual)
        with pytest.raises(ValueError, match="does not match"):
            unet.conv_in(torch.randn(2, 8, 16, 16))
    assert torch.equal(unet.conv_in(x), conv_out)


def test_grid_positional_encoding_is_sams_random_fourier_grid():
    torch.manual_seed(0)
    pe = GridPositionalEncoding(num_pos_feats=8, scale=1.0)
    assert "positional_embedding" in dict(pe.named_buffers()) and not list(pe.parameters())
    g = 4
    out = pe.grid(g)
    assert out.shape == (16, g, g)
    gauss = pe.positional_embedding
    for (i, j) in [(0, 0), (1, 3), (3, 2)]:
        coord = torch.tensor([(j + 0.5) / g, (i + 0.5) / g]) * 2 - 1  # (x, y)
        proj = 2 * math.pi * (coord @ gauss)
        torch.testing.assert_close(out[:, i, j], torch.cat([proj.sin(), proj.cos()]))


def test_bim_outputs_and_text_residual_formula():
    torch.manual_seed(0)
    bim = BidirectionalInteraction(BIMConfig(hidden_size=32, depth=2, mlp_dim=64, num_heads=4), text_dim=16,
                                   grid_size=4, unet_channels=8).eval()
    text, patches = torch.randn(2, 77, 16), torch.randn(2, 16, 32)
    f2, spatial = bim(text, patches, (8, 8))
    assert torch.equal(f2, text) and spatial.shape == (2, 8, 8, 8) and torch.count_nonzero(spatial) == 0
    with torch.no_grad():
        bim.text_out.weight.normal_()
        bim.text_out.bias.normal_()
    f3, _ = bim(text, patches, (8, 8))
    tokens, _ = bim.transformer(point_embeddings=bim.text_in(text).unsqueeze(1),
                                image_embeddings=patches.transpose(1, 2).reshape(2, 32, 4, 4),
                                image_positional_embeddings=bim.pos_encoding.grid(4)[None].expand(2, -1, -1, -1),
                                attention_similarity=None)
    torch.testing.assert_close(f3, text + 0.5 * bim.text_out(tokens.squeeze(1)))
    with pytest.raises(ValueError, match="4x4=16 patches"):
        bim(text, torch.randn(2, 9, 32), (8, 8))


def test_bim_key_layout_is_sams_two_way_transformer():
    bim = BidirectionalInteraction(BIMConfig(), text_dim=768, grid_size=16, unet_channels=320)
    shapes = {k: tuple(v.shape) for k, v in bim.state_dict().items()}
    assert shapes["text_in.weight"] == (1024, 768)
    assert shapes["transformer.layers.0.self_attn.q_proj.weight"] == (1024, 1024)
    assert shapes["transformer.layers.1.cross_attn_token_to_image.q_proj.weight"] == (512, 1024)
    assert shapes["transformer.layers.0.cross_attn_image_to_token.out_proj.weight"] == (1024, 512)
    assert shapes["transformer.layers.0.mlp.lin1.weight"] == (2048, 1024)
    assert shapes["transformer.final_attn_token_to_image.v_proj.weight"] == (512, 1024)
    assert shapes["pos_encoding.positional_embedding"] == (2, 512)
    assert shapes["image_out.weight"] == (320, 1024, 1, 1) and shapes["text_out.weight"] == (768, 1024)
    assert len(shapes) == 89  # the released modulate-15000 file holds 89 keys


def test_qformer_structure_matches_reference():
    q = SmartEditQFormer(QFormerConfig(), llm_hidden_size=4096)
    keys = set(q.state_dict())
    cross = sorted({int(k.split(".")[3]) for k in keys if ".crossattention." in k})
    assert cross == [0, 2, 4]
    assert q.state_dict()["qformer.encoder.layer.0.crossattention.attention.key.weight"].shape == (768, 4096)
    # no text FFN (only the query FFNs intermediate_query / output_query exist)
    assert not any(re.search(r"layer\.\d+\.(intermediate|output)\.", k) for k in keys)
    # the released embeddings file has 133 keys = position_ids + LayerNorm (2) + 3×26 + 3×16 layer tensors
    # + sd_query_tokens + lm_head + mm_projector (2); ours: queries + LayerNorm (2) + the same layer tensors
    assert len(keys) == 1 + 2 + 3 * 26 + 3 * 16
    assert abs(q.query_tokens.std().item() - 0.02) < 0.002
    out = q(torch.randn(2, 32, 4096))
    assert out.shape == (2, 77, 768)


def test_cfg_dropout_proportions():
    masks = sample_dropout(200_000, 0.05, generator=torch.Generator().manual_seed(0))
    both = (masks.drop_text & masks.drop_image).float().mean().item()
    text_only = (masks.drop_text & ~masks.drop_image).float().mean().item()
    image_only = (~masks.drop_text & masks.drop_image).float().mean().item()
    for got in (both, text_only, image_only):
        assert abs(got - 0.05) < 0.003
    ctx, null = torch.ones(4, 77, 8), torch.zeros(1, 77, 8)
    src = torch.ones(4, 4, 2, 2)
    m = type(masks)(drop_text=torch.tensor([True, True, False, False]),
                    drop_image=torch.tensor([True, False, True, False]))
    c, s = apply_dropout(ctx, null, src, m)
    assert c[:, 0, 0].tolist() == [0, 0, 1, 1] and s[:, 0, 0, 0].tolist() == [0, 1, 0, 1]


def test_guidance_branches_and_combination():
    ctx, null, src = torch.randn(2, 77, 8), torch.randn(1, 77, 8), torch.randn(2, 4, 2, 2)
    contexts, sources = guidance_branches(ctx, null, src)
    assert torch.equal(contexts[:2], ctx) and torch.equal(contexts[2:4], null.expand(2, -1, -1))
    assert torch.equal(sources[2:4], src) and torch.count_nonzero(sources[4:]) == 0
    ti, i, u = torch.randn(3, 2, 4)
    out = combine_guidance(torch.cat([ti, i, u]), 7.5, 1.5)
    torch.testing.assert_close(out, u + 7.5 * (ti - i) + 1.5 * (i - u))
