import json

import pytest

from smartedit.config import PRESETS, ConfigError, SmartEditConfig, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate_and_round_trip(name, tmp_path):
    cfg = preset(name)
    assert cfg.preset == name
    assert SmartEditConfig.from_dict(cfg.to_dict()) == cfg
    cfg.save(tmp_path)
    assert SmartEditConfig.load(tmp_path) == cfg
    json.loads((tmp_path / "config.json").read_text())


def test_paper_numbers_in_7b_preset():
    cfg = preset("7b")
    assert cfg.mllm.hidden_size == 4096 and cfg.mllm.full_vocab_size == 32035
    assert cfg.mllm.projector == "linear"
    assert cfg.vision.num_patches == 256 and cfg.vision.hidden_size == 1024
    assert (cfg.qformer.num_queries, cfg.qformer.hidden_size, cfg.qformer.num_hidden_layers) == (77, 768, 6)
    assert cfg.qformer.cross_attention_frequency == 2
    assert (cfg.bim.hidden_size, cfg.bim.depth, cfg.bim.mlp_dim, cfg.bim.num_heads) == (1024, 2, 2048, 8)
    assert cfg.bim.attention_downsample_rate == 2 and cfg.bim.text_scale == 0.5
    assert cfg.unet.in_channels == 8 and cfg.unet.cross_attention_dim == 768
    assert cfg.latent_size == 32 and cfg.cfg_dropout_prob == 0.05
    assert preset("13b").mllm.hidden_size == 5120


def test_every_problem_reported_at_once():
    data = preset("tiny").to_dict()
    data["bogus"] = 1
    data["mllm"]["nope"] = 2
    data["mllm"]["projector"] = "mlp9"
    data["qformer"]["num_queries"] = 0
    data["unet"]["mask_channels"] = 3
    with pytest.raises(ConfigError) as err:
        SmartEditConfig.from_dict(data)
    msg = str(err.value)
    for needle in ("'bogus'", "'mllm.nope'", "mllm.projector", "qformer.num_queries", "unet.mask_channels"):
        assert needle in msg
    assert len(err.value.problems) == 5


def test_cross_component_checks():
    with pytest.raises(ConfigError, match="cross_attention_dim"):
        preset("tiny", **{"qformer.hidden_size": 32, "qformer.num_attention_heads": 4})
    with pytest.raises(ConfigError, match="vision.hidden_size"):
        preset("tiny", **{"bim.hidden_size": 32})
    # without BIM the BIM width is irrelevant
    assert preset("tiny", **{"bim.enabled": False, "bim.hidden_size": 32}).bim.enabled is False


def test_bad_json_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        SmartEditConfig.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        SmartEditConfig.load(tmp_path)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("70b")
