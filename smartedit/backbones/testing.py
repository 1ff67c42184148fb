"""Tiny random models in the published folder layouts, built locally (tests, examples; nothing is downloaded)."""

from __future__ import annotations

import json
import os

__all__ = ["QWEN2_VL_CHAT_TEMPLATE", "build_tiny_qwen_tokenizer", "build_tiny_qwen_vl", "build_tiny_sdxl_ip2p",
           "build_tiny_llava_hf"]

QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")
"""The chat template of Qwen2-VL / Qwen2.5-VL Instruct (its chat_template.json)."""

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
"""Qwen2.5-VL's first special tokens, in its id order (151643 …)."""

_CORPUS = ["Please edit the image following this instruction: remove the red circle",
           "Here is an image. make the square blue", "Could you change the image as described? add a cat",
           "Edit the picture: replace the cup with a spoon", "Sure, here is the edited image",
           "Certainly, I have edited the image", "Here is the picture after the edit", "Create a picture of a dog",
           "Here is the picture", "You are a helpful assistant.", "What is in the image? A red circle and a square."]


def build_tiny_qwen_tokenizer(folder: str, vocab_size: int = 400):
    """A byte-level BPE tokenizer with Qwen2's pre-tokenizer, its special tokens after the BPE vocabulary (as in
    Qwen: ``<|endoftext|>`` first), ``eos = <|im_end|>``, ``pad = <|endoftext|>`` and the Qwen2-VL chat template;
    saved with ``save_pretrained`` (tokenizer.json + tokenizer_config.json + chat template)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    split = Regex(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
                  r"\s+(?!\S)|\s+")
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(split, behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   clean_up_tokenization_spaces=False)
    fast.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL})
    fast.chat_template = QWEN2_VL_CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def build_tiny_qwen_vl(folder: str, seed: int = 0, image_size: int = 32) -> str:
    """A tiny random ``Qwen2_5_VLForConditionalGeneration`` saved as the published folders are: config.json,
    model.safetensors, tokenizer files with the chat template, preprocessor_config.json (Qwen2-VL image processor,
    patch 4, merge 2). Returns ``folder``."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

    os.makedirs(folder, exist_ok=True)
    tok = build_tiny_qwen_tokenizer(folder)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok) + 24, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "type": "mrope",
                                          "mrope_section": [2, 3, 3]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, window_size=16,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # (transformers' init leaves some norms at 1 / biases at 0; random makes parity stricter)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder)
    Qwen2VLImageProcessor(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=image_size**2,
                          max_pixels=image_size**2).save_pretrained(folder)
    with open(os.path.join(folder, "chat_template.json"), "w", encoding="utf-8") as f:
        json.dump({"chat_template": QWEN2_VL_CHAT_TEMPLATE}, f)
    return folder


def _perturb(*modules) -> None:
    """Small random noise on every parameter: zero-initialised layers made random, so a loader that skips a tensor
    is caught."""
    import torch

    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.02)


def build_tiny_sdxl_ip2p(folder: str, seed: int = 0, in_channels: int = 8) -> str:
    """A tiny random SDXL InstructPix2Pix pipeline folder as diffusers saves it (model_index.json for
    ``StableDiffusionXLInstructPix2PixPipeline``, unet/ with the tiny SDXL-layout UNet of the ``tiny-sdxl`` preset,
    taking ``in_channels`` (8: noisy ‖ source latent; 4: a plain SDXL text-to-image UNet), vae/, scheduler/ with
    SDXL's Euler schedule); the text encoders are left out (``None`` in model_index.json). Returns ``folder``."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLInstructPix2PixPipeline, UNet2DConditionModel

    from ..config import preset
    from ..unet import build_vae
    from .presets import TINY_SDXL_UNET

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**dict(TINY_SDXL_UNET, in_channels=in_channels))
    vae = build_vae(preset("tiny-sdxl").vae)
    _perturb(unet, vae)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    pipe = StableDiffusionXLInstructPix2PixPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                                    tokenizer_2=None, unet=unet, scheduler=scheduler,
                                                    add_watermarker=False)
    pipe.save_pretrained(folder)
    return folder


def build_tiny_llava_hf(folder: str, seed: int = 0, next_: bool = False) -> str:
    """A tiny random llava-hf model saved as the published folders are (config.json, model.safetensors, the
    tokenizer with ``<image>`` / ``<pad>`` added, preprocessor_config.json): ``LlavaForConditionalGeneration``
    (LLaVA-1.5) or, with ``next_``, ``LlavaNextForConditionalGeneration`` (LLaVA-NeXT, any-resolution grid of one
    tile: the 32 px base). The LLM is the tiny preset's (hidden 64, the shipped tiny tokenizer's 1024 tokens, rows
    padded to a multiple of 64 as llava-1.5-7b-hf's 32064), the vision tower a 32 px CLIP ViT (patch 8)."""
    import torch
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaNextConfig, LlavaNextForConditionalGeneration)

    from ..model import TINY_TOKENIZER, TINY_VOCAB_SIZE

    os.makedirs(folder, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    tok.add_tokens(["<image>", "<pad>"], special_tokens=True)
    tok.pad_token = "<pad>"
    tok.save_pretrained(folder)
    text = LlamaConfig(vocab_size=TINY_VOCAB_SIZE + 64, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, bos_token_id=1,
                       eos_token_id=2, pad_token_id=TINY_VOCAB_SIZE + 1, tie_word_embeddings=False)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    common = dict(text_config=text, vision_config=vision, image_token_index=TINY_VOCAB_SIZE, vision_feature_layer=-2)
    torch.manual_seed(seed)
    if next_:
        model = LlavaNextForConditionalGeneration(LlavaNextConfig(**common, image_grid_pinpoints=[[32, 32]]))
    else:
        model = LlavaForConditionalGeneration(LlavaConfig(**common))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.eval().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def build_tiny_sd3_ip2p(folder: str, seed: int = 0, in_channels: int = 32) -> str:
    """A tiny random SD3 InstructPix2Pix folder as UltraEdit publishes theirs (model_index.json for
    ``StableDiffusion3InstructPix2PixPipeline``, transformer/ with the ``tiny-sd3`` preset's MMDiT taking
    ``in_channels`` (32: noisy ‖ source latent; 16: a plain SD3 text-to-image transformer), vae/ with SD3's
    scaling and shift factors, scheduler/ with SD3's flow-matching schedule, shift 3); the three text encoders are
    left out (``None``). Returns ``folder``."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from ..config import preset
    from ..unet import build_vae
    from .presets import TINY_SD3_TRANSFORMER

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**dict(TINY_SD3_TRANSFORMER, in_channels=in_channels))
    vae = build_vae(preset("tiny-sd3").vae)
    _perturb(transformer, vae)
    pipe = StableDiffusion3Pipeline(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(
        shift=3.0), text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
        tokenizer_3=None)
    pipe.save_pretrained(folder)
    index_path = os.path.join(folder, "model_index.json")
    with open(index_path, encoding="utf-8") as f:
        index = json.load(f)
    index["_class_name"] = "StableDiffusion3InstructPix2PixPipeline"  # (a community pipeline: not in diffusers)
    with open(index_path, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
    return folder
