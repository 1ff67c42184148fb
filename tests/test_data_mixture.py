"""The stage-2 mixture: proportions of the config, same seed → same sequence, exact resume at draw k (also through
DataLoader workers over parquet shards), and the recipe's ratio rule (docs/design.md)."""

import numpy as np
import pytest

from smartedit.data.io import ParquetSampleDataset, write_samples
from smartedit.config import ConfigError
from smartedit.data.loader import mixture_loader, open_mixture
from smartedit.data.mixture_config import DEFAULT_STAGE2_RATIOS, DataConfig
from smartedit.data.sources import source_folders
from smartedit.data.schema import Sample
from smartedit.data.validate import LayoutError


def fake_sources(sizes: dict[str, int]) -> dict[str, list[Sample]]:
    return {n: [Sample(f"{n}/{i}", n, "caption", caption=f"{n} {i}") for i in range(k)] for n, k in sizes.items()}


def ids_collate(samples, keys):
    return {"ids": [s.id for s in samples], "keys": list(keys)}


def test_default_ratios_follow_design_md():
    r = DEFAULT_STAGE2_RATIOS
    assert sum(r.values()) == pytest.approx(1.0)
    assert r["synthetic_reasoning"] == 0.15 and r["reasonseg"] == 0.085
    assert 0.15 <= r["llava_instruct"] <= 0.19
    assert r["ip2p"] == r["magicbrush"]  # editing 1 : 1
    assert r["refcoco"] + r["grefcoco"] + r["cocostuff"] == pytest.approx(1 - 0.15 - 0.085 - r["llava_instruct"]
                                                                          - r["ip2p"] - r["magicbrush"])


def test_mixture_proportions_over_20k_draws_match_the_config():
    config = DataConfig(ratios=dict(DEFAULT_STAGE2_RATIOS))
    sizes = {"synthetic_reasoning": 5, "reasonseg": 3, "llava_instruct": 50, "ip2p": 100, "magicbrush": 20,
             "refcoco": 40, "grefcoco": 30, "cocostuff": 30}
    mixture = config.build(fake_sources(sizes), seed=7)
    n = 20_000
    counts = {name: 0 for name in sizes}
    for i in range(n):
        name, j = mixture.choose(0, i)
        assert 0 <= j < sizes[name]
        counts[name] += 1
    probs = config.normalized()
    for name in sizes:
        assert abs(counts[name] / n - probs[name]) < 0.01, (name, counts[name] / n, probs[name])


def test_same_seed_same_sequence_and_exact_resume():
    sources = fake_sources({"ip2p": 37, "magicbrush": 11, "refcoco": 23})
    config = DataConfig(ratios={"ip2p": 2, "magicbrush": 1, "refcoco": 1}, samples_per_epoch=120)
    a, b = config.build(sources, seed=3), config.build(sources, seed=3)
    seq = [a[i][0].id for i in range(120)]
    assert seq == [b[i][0].id for i in range(120)]
    other = config.build(sources, seed=4)
    assert seq != [other[i][0].id for i in range(120)]
    a.set_epoch(1)
    assert seq != [a[i][0].id for i in range(120)]  # a new epoch is a new sequence …
    assert [a.draw(0, i)[0].id for i in range(120)] == seq  # … and epoch 0 stays what it was

    bs, k = 8, 40  # interrupted after 5 batches
    full = [batch["ids"] for batch in mixture_loader(b, ids_collate, batch_size=bs, epoch=2)]
    resumed = [batch["ids"] for batch in mixture_loader(b, ids_collate, batch_size=bs, epoch=2, start=k)]
    assert resumed == full[k // bs:]
    first = next(iter(mixture_loader(b, ids_collate, batch_size=bs, epoch=2, start=k)))
    assert first["keys"] == [(3, 2, i) for i in range(k, k + bs)]  # collator keys = (seed, epoch, index)
    with pytest.raises(ValueError):
        mixture_loader(b, ids_collate, batch_size=bs, start=121)


def test_resume_through_two_workers_over_parquet_shards(tmp_path):
    for name, n in (("ip2p", 30), ("cocostuff", 17)):
        write_samples([Sample(f"{name}/{i}", name, "caption", caption=f"{name} {i}") for i in range(n)],
                      tmp_path / name, f"{name}-train", shard_size=8, row_group_size=4)
    config = DataConfig(ratios={"ip2p": 1, "cocostuff": 1, "magicbrush": 1}, samples_per_epoch=64)
    with pytest.raises(ValueError, match=r"needs source\(s\) \['magicbrush'\]"):
        open_mixture(tmp_path, config, seed=11)
    mixture = open_mixture(tmp_path, config, seed=11, allow_missing=True)
    assert isinstance(mixture.sources["ip2p"], ParquetSampleDataset)
    serial = [b["ids"] for b in mixture_loader(mixture, ids_collate, batch_size=4, epoch=1)]
    parallel = [b["ids"] for b in mixture_loader(mixture, ids_collate, batch_size=4, epoch=1, start=24,
                                                 num_workers=2)]
    assert parallel == serial[6:]
    assert {i.split("/")[0] for ids in serial for i in ids} == {"ip2p", "cocostuff"}
    with pytest.raises(LayoutError, match=r"no shards for source\(s\) \['magicbrush'\]"):
        source_folders(tmp_path, ["ip2p", "magicbrush"])


def test_ratio_rule_from_sizes():
    sizes = {"synthetic_reasoning": 476, "reasonseg": 239, "llava_instruct": 120_000, "ip2p": 313_010,
             "magicbrush": 8_807, "refcoco": 42_404, "grefcoco": 60_000, "cocostuff": 118_000}
    config = DataConfig.from_sizes(sizes)
    r = config.ratios
    assert sum(r.values()) == pytest.approx(1.0)
    assert r["synthetic_reasoning"] == 0.15 and r["reasonseg"] == 0.085
    assert r["llava_instruct"] == pytest.approx(120_000 / sum(sizes.values()))  # ≈ 0.18: chat by its size
    assert r["ip2p"] == pytest.approx(r["magicbrush"])
    assert r["refcoco"] / r["cocostuff"] == pytest.approx(42_404 / 118_000)
    rest = 1 - 0.15 - 0.085 - r["llava_instruct"]
    edit_share = rest * (313_010 + 8_807) / (313_010 + 8_807 + 42_404 + 60_000 + 118_000)
    assert r["ip2p"] + r["magicbrush"] == pytest.approx(edit_share)
    assert DataConfig.from_sizes({"llava_instruct": 10_000, "ip2p": 100}).ratios["llava_instruct"] == 0.19
    assert DataConfig.from_sizes({"llava_instruct": 1, "ip2p": 100}).ratios["llava_instruct"] == 0.15
    with pytest.raises(ConfigError, match=r"data\.ratios\.ip2p must be a number >= 0"):
        DataConfig(ratios={"ip2p": -1}).normalized()
    assert np.isclose(sum(DataConfig.stage1().normalized().values()), 1.0)
