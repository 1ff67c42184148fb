"""Loading and building in the target dtype: from_pretrained streams tensors onto the device in the asked dtype (no
float32 copy of the model), from_config creates the weights in that dtype, and model folders of 7B / 13B are written
in bfloat16 by default."""

import pytest
import torch
from helpers import load_script

from smartedit.config import preset
from smartedit.model import FLOAT32_BUFFERS, SmartEditModel, save_dtype


@pytest.mark.parametrize("shard", [None, "200KB"])
def test_from_pretrained_in_bf16_is_the_float32_model_cast(tiny_model, tmp_path, shard):
    if shard:
        tiny_model.save_pretrained(tmp_path, max_shard_size=shard)
        assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    else:
        tiny_model.save_pretrained(tmp_path)
    full = SmartEditModel.from_pretrained(tmp_path)
    half = SmartEditModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    ref = {k: v for k, v in full.state_dict().items()}
    for name, tensor in half.state_dict().items():
        if name.endswith(FLOAT32_BUFFERS):
            assert tensor.dtype == torch.float32 and torch.equal(tensor, ref[name]), name
        elif tensor.is_floating_point():
            assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, ref[name].to(torch.bfloat16)), name
        else:
            assert torch.equal(tensor, ref[name])
    assert not any(p.is_meta for p in half.parameters()) and not any(b.is_meta for b in half.buffers())
    assert half.mllm.llm.model.rotary_emb.inv_freq.dtype == torch.float32  # (a non-persistent buffer)
    assert all(p.requires_grad for p in half.parameters())  # (as built: freezing is the stages' business)


def test_from_pretrained_reads_each_tensor_once_in_the_target_dtype(tiny_model, tmp_path, monkeypatch):
    """No whole-model state dict: tensors arrive one at a time and are cast before the next one is read."""
    import safetensors

    tiny_model.save_pretrained(tmp_path)
    seen = []
    original = safetensors.safe_open

    class Spy:
        def __init__(self, *args, **kwargs):
            self.inner = original(*args, **kwargs)

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def keys(self):
            return self.inner.keys()

        def get_slice(self, name):
            return self.inner.get_slice(name)

        def get_tensor(self, name):
            seen.append(name)
            return self.inner.get_tensor(name)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    model = SmartEditModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert sorted(seen) == sorted(model.state_dict()) and len(seen) == len(set(seen))


def test_from_config_builds_in_the_target_dtype():
    model = SmartEditModel.from_config(preset("tiny"), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(b.dtype == torch.float32 for n, b in model.named_buffers() if n.endswith(FLOAT32_BUFFERS))
    assert torch.get_default_dtype() == torch.float32  # restored
    meta = SmartEditModel.from_config(preset("7b", **{"mllm.vocab_size": 1024}), tokenizer=None,
                                      dtype=torch.bfloat16, device="meta")
    assert sum(p.numel() for p in meta.parameters()) > 7e9 and all(p.is_meta for p in meta.parameters())


def test_7b_and_13b_are_saved_in_bf16_by_default():
    assert save_dtype(preset("tiny")) == torch.float32
    assert save_dtype(preset("7b")) == save_dtype(preset("13b")) == torch.bfloat16
    assert save_dtype(preset("7b"), "float32") == torch.float32
    with pytest.raises(ValueError, match="dtype must be auto"):
        save_dtype(preset("7b"), "fp8")


def test_attn_implementation_is_selectable(tiny_model):
    image = torch.rand(1, 3, 64, 64)
    tiny_model.eval()
    with torch.no_grad():
        sdpa = tiny_model.encode_condition(image, "remove the red circle")
        tiny_model.set_attn_implementation("eager")
        eager = tiny_model.encode_condition(image, "remove the red circle")
    assert tiny_model.config.attn_implementation == "eager"
    assert tiny_model.mllm.llm.config._attn_implementation == "eager"
    assert tiny_model.bim.transformer.layers[0].self_attn.config._attn_implementation == "eager"
    torch.testing.assert_close(eager.context, sdpa.context, rtol=0, atol=1e-5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="flash_attention_2' cannot run here.*Use 'sdpa'"):
            tiny_model.set_attn_implementation("flash_attention_2")
        assert tiny_model.config.attn_implementation == "eager"  # unchanged
        with pytest.raises(ValueError, match="cannot run here"):
            SmartEditModel(preset("tiny", attn_implementation="flash_attention_2"))
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        preset("tiny", attn_implementation="flash")


@pytest.mark.slow
def test_load_memory_bench_runs(tmp_path, capsys):
    out = tmp_path / "load.json"
    bench = load_script("bench/load_memory.py")
    assert bench.main(["--preset", "tiny", "--set", "mllm.num_hidden_layers=1", "--tmp", str(tmp_path),
                       "--out", str(out)]) == 0
    import json

    report = json.loads(out.read_text())
    assert [x["mode"] for x in report["loads"]] == ["stream", "eager"]
    assert all(x["dtype"] == "bfloat16" and x["model_gb"] > 0 for x in report["loads"])
    assert "from_pretrained (streamed)" in capsys.readouterr().out
