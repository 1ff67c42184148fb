"""Metric backbones from local folders (tiny random weights in the real layouts) equal a direct computation."""

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from smartedit.eval import testing
from smartedit.eval.backbones import BackboneError
from smartedit.eval.clip_score import crop_to_mask_bbox, load_clip_scorer, mask_bbox
from smartedit.eval.dino import center_crop, load_dino, resize_shorter
from smartedit.eval.lpips import LPIPS, load_lpips


def _image(seed, w=60, h=44):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return testing.save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return testing.save_tiny_dino(tmp_path_factory.mktemp("dino") / "tiny-dino")


@pytest.fixture(scope="module")
def lpips_dir(tmp_path_factory):
    return testing.save_random_lpips(tmp_path_factory.mktemp("lpips") / "lpips")


# ---- CLIP ------------------------------------------------------------------------------------------------
def _direct_clip(directory, images, texts):
    """Independent path: AutoProcessor (CLIPProcessor) + CLIPModel.forward's normalised image/text embeds."""
    from transformers import AutoProcessor, CLIPModel

    model = CLIPModel.from_pretrained(os.fspath(directory), local_files_only=True).eval()
    proc = AutoProcessor.from_pretrained(os.fspath(directory), local_files_only=True)
    inputs = proc(text=texts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    return out.image_embeds.double(), out.text_embeds.double()


def test_clip_metrics_equal_direct_computation(clip_dir):
    scorer = load_clip_scorer(clip_dir)
    a, b = _image(0), _image(1, 40, 70)
    texts = ["a red square", "a blue circle on a table"]
    img, txt = _direct_clip(clip_dir, [a, b], texts)
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    assert scorer.image_similarity(a, b) == pytest.approx(float(img[0] @ img[1]), abs=1e-5)
    assert scorer.text_similarity(a, texts[0]) == pytest.approx(float(img[0] @ txt[0]), abs=1e-5)
    cos = float(img[1] @ txt[1])
    assert scorer.clip_score(b, texts[1]) == pytest.approx(100 * max(cos, 0.0), abs=1e-3)
    d_img, d_txt = img[1] - img[0], txt[1] - txt[0]
    assert scorer.direction(a, b, texts[0], texts[1]) == pytest.approx(
        float(F.cosine_similarity(d_img[None], d_txt[None])[0]), abs=1e-5)


def test_clip_crop_score_uses_the_mask_bounding_box(clip_dir):
    scorer = load_clip_scorer(clip_dir)
    image = _image(2, 64, 64)
    mask = np.zeros((64, 64), bool)
    mask[10:20, 30:41] = True
    mask[25, 12] = True
    assert mask_bbox(mask) == (12, 10, 41, 26)
    crop = crop_to_mask_bbox(image, mask)
    assert crop.size == (29, 16)
    assert np.array_equal(np.asarray(crop), np.asarray(image)[10:26, 12:41])
    img, txt = _direct_clip(clip_dir, [image.crop((12, 10, 41, 26))], ["a cat"])
    cos = float(F.normalize(img, dim=-1)[0] @ F.normalize(txt, dim=-1)[0])
    assert scorer.crop_clip_score(image, mask, "a cat") == pytest.approx(100 * max(cos, 0.0), abs=1e-3)
    assert mask_bbox(np.zeros((4, 4), bool)) is None


def test_clip_info_names_backbone_and_hash(clip_dir):
    info = load_clip_scorer(clip_dir).info
    assert info.name == "tiny-clip" and info.kind == "clip"
    assert info.sha256 == _sha(clip_dir / "model.safetensors")
    assert info.files == {"model.safetensors": info.sha256}
    assert "patch=8" in info.arch and info.tag() == f"tiny-clip sha256:{info.sha256[:12]}"


def test_clip_errors_name_the_layout(tmp_path, clip_dir):
    with pytest.raises(BackboneError, match="folder does not exist(.|\n)*config.json"):
        load_clip_scorer(tmp_path / "nope")
    with pytest.raises(BackboneError, match="config.json is missing"):
        load_clip_scorer(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(BackboneError, match="model_type 'vit'"):
        load_clip_scorer(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(BackboneError, match="no weights found"):
        load_clip_scorer(tmp_path)


# ---- DINO ------------------------------------------------------------------------------------------------
def test_dino_geometry_follows_torchvision_rules():
    im = Image.new("RGB", (300, 200))
    r = resize_shorter(im, 256)
    assert r.size == (384, 256)
    assert resize_shorter(Image.new("RGB", (200, 301)), 256).size == (256, 385)
    c = center_crop(Image.fromarray(np.arange(384 * 256 * 3, dtype=np.uint32).reshape(256, 384, 3).astype(np.uint8)),
                    224)
    assert c.size == (224, 224)


def test_dino_similarity_equals_direct_computation(dino_dir):
    from transformers import ViTModel

    scorer = load_dino(dino_dir)
    a, b = _image(3, 90, 60), _image(4, 50, 80)
    model = ViTModel.from_pretrained(os.fspath(dino_dir), local_files_only=True, add_pooling_layer=False).eval()

    def direct(im):
        w, h = im.size
        s = 256 / min(w, h)
        im = im.resize((256, int(h * s)) if w <= h else (int(w * s), 256), Image.Resampling.BICUBIC)
        w, h = im.size
        top, left = int(round((h - 224) / 2)), int(round((w - 224) / 2))
        arr = np.asarray(im, dtype=np.float64)[top:top + 224, left:left + 224] / 255.0
        arr = (arr - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
        x = torch.from_numpy(arr.transpose(2, 0, 1)[None]).float()
        with torch.no_grad():
            return model(pixel_values=x).last_hidden_state[0, 0].double()

    fa, fb = direct(a), direct(b)
    assert scorer.similarity(a, b) == pytest.approx(float(F.cosine_similarity(fa[None], fb[None])[0]), abs=1e-5)
    assert scorer.info.sha256 == _sha(dino_dir / "model.safetensors")


def test_dino_loads_pytorch_bin_with_weights_only(tmp_path, dino_dir):
    from safetensors.torch import load_file

    (tmp_path / "config.json").write_bytes((dino_dir / "config.json").read_bytes())
    torch.save(load_file(dino_dir / "model.safetensors"), tmp_path / "pytorch_model.bin")
    a, b = _image(5), _image(6)
    assert load_dino(tmp_path).similarity(a, b) == pytest.approx(load_dino(dino_dir).similarity(a, b), abs=1e-6)
    assert load_dino(tmp_path).info.files == {"pytorch_model.bin": _sha(tmp_path / "pytorch_model.bin")}


# ---- LPIPS -----------------------------------------------------------------------------------------------
def _direct_lpips(net, lin, a, b, weight=None):
    """LPIPS written out functionally from the raw state dicts (torchvision / lpips keys)."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def conv(x, name, **kw):
        return F.conv2d(x, net[f"{name}.weight"], net[f"{name}.bias"], **kw)

    def fire(x, i):
        s = F.relu(conv(x, f"features.{i}.squeeze"))
        return torch.cat([F.relu(conv(s, f"features.{i}.expand1x1")),
                          F.relu(conv(s, f"features.{i}.expand3x3", padding=1))], 1)

    def feats(x):
        x = (2 * x[None].float() - 1 - shift) / scale
        out = []
        x = F.relu(conv(x, "features.0", stride=2))
        out.append(x)
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        x = fire(fire(x, 3), 4)
        out.append(x)
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        x = fire(fire(x, 6), 7)
        out.append(x)
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        for i in (9, 10, 11, 12):
            x = fire(x, i)
            out.append(x)
        return out

    total = 0.0
    for k, (x, y) in enumerate(zip(feats(a), feats(b))):
        x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        y = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        d = F.conv2d((x - y) ** 2, lin[f"lin{k}.model.1.weight"])
        if weight is None:
            total += float(d.mean())
        else:
            w = F.adaptive_avg_pool2d(weight[None, None].float(), d.shape[-2:])
            total += float((d * w).sum() / w.sum())
    return total


def test_lpips_equals_direct_computation(lpips_dir):
    from safetensors.torch import load_file

    model = load_lpips(lpips_dir)
    net = load_file(lpips_dir / "squeezenet1_1.safetensors")
    lin = load_file(lpips_dir / "squeeze.safetensors")
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 96, 80, generator=g), torch.rand(3, 96, 80, generator=g)
    assert model.distance(a, b) == pytest.approx(_direct_lpips(net, lin, a, b), rel=1e-5)
    bg = torch.ones(96, 80)
    bg[20:60, 10:50] = 0
    assert model.masked_distance(a, b, bg) == pytest.approx(_direct_lpips(net, lin, a, b, bg), rel=1e-5)
    assert model.masked_distance(a, b, torch.ones(96, 80)) == pytest.approx(model.distance(a, b), rel=1e-6)
    assert model.distance(a, a) == pytest.approx(0.0, abs=1e-7)
    model.train()
    assert not model.training  # dropout can never switch on
    info = model.info
    assert info.name == "lpips-squeeze-v0.1"
    assert info.files == {"squeezenet1_1.safetensors": _sha(lpips_dir / "squeezenet1_1.safetensors"),
                          "squeeze.safetensors": _sha(lpips_dir / "squeeze.safetensors")}


def test_lpips_pth_and_lpips_package_key_layouts(tmp_path, lpips_dir):
    """.pth files (weights_only) and the lpips package's full-model keys (net.sliceN.i.*) load identically."""
    ref = load_lpips(lpips_dir)
    pth = testing.save_random_lpips(tmp_path / "pth", fmt="pth")
    from_pth = load_lpips(pth)
    assert set(from_pth.info.files) == {"squeezenet1_1-random.pth", "squeeze.pth"}
    full = tmp_path / "full"
    full.mkdir()
    state = {}
    slices = [range(0, 2), range(2, 5), range(5, 8), range(8, 10), range(10, 11), range(11, 12), range(12, 13)]
    for key, value in ref.net.state_dict().items():
        idx = int(key.split(".")[1])
        n = next(s for s, r in enumerate(slices, start=1) if idx in r)
        state[f"net.slice{n}.{key[len('features.'):]}"] = value
    for key, value in ref.state_dict().items():
        if key.startswith("lin"):
            state[key] = value
    torch.save(state, full / "squeezenet1_1.pth")
    torch.save(state, full / "squeeze.pth")
    a, b = torch.rand(3, 64, 64), torch.rand(3, 64, 64)
    assert load_lpips(full).distance(a, b) == pytest.approx(ref.distance(a, b), rel=1e-6)


def test_public_lpips_heads_map_one_to_one():
    """The lpips v0.1 squeeze heads shipped with torchmetrics load into this module's keys unchanged."""
    spec = importlib.util.find_spec("torchmetrics")
    path = Path(spec.origin).parent / "functional" / "image" / "lpips_models" / "squeeze.pth"
    if not path.is_file():
        pytest.skip("torchmetrics' squeeze.pth not present")
    from smartedit.eval.lpips import load_state_file, normalize_lin_keys

    state = normalize_lin_keys(load_state_file(path))
    expected = {k: v.shape for k, v in LPIPS().state_dict().items() if k.startswith("lin")}
    assert {k: v.shape for k, v in state.items()} == expected


def test_lpips_missing_files_name_the_layout(tmp_path):
    with pytest.raises(BackboneError, match="missing squeezenet1_1 backbone, squeeze heads(.|\n)*lin0.model.1"):
        load_lpips(tmp_path)
    testing.save_random_lpips(tmp_path)
    (tmp_path / "squeeze.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BackboneError, match="cannot read weights"):
        load_lpips(tmp_path)
