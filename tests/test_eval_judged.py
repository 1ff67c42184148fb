"""VLM-judged benchmarks (GEdit-Bench, ImgEdit-Bench, KRIS-Bench, RISEBench): reply parsing against example judge
replies, each protocol's arithmetic with a scripted judge, and every script end to end with a tiny random judge
saved in a real transformers folder layout."""

import json
import math

import pytest
from PIL import Image

from helpers import load_script

from smartedit.eval import testing
from smartedit.eval.benchmark import run_benchmark
from smartedit.eval.judge import (JudgeParseError, parse_final_scores, parse_json_field, parse_labeled_scores,
                                  parse_score_list, parse_yes_no)


# ---- parsing example replies ---------------------------------------------------------------------------------
def test_viescore_replies():
    assert parse_score_list('{\n"score" : [7, 9],\n"reasoning" : "the hat is there"\n}', 2) == [7, 9]
    assert parse_score_list('||V^=^V||\n{"score": [3, 10], "reasoning": "ok"}\n||V^=^V||', 2) == [3, 10]
    assert parse_score_list("Sure! score = [4, 6] because the edit is partial", 2) == [4, 6]
    assert parse_score_list("8", 1) == [8]
    assert parse_score_list("{'score': [5, 5], 'reasoning': 'single quotes'}", 2) == [5, 5]
    for bad in ('{"score": [11, 3]}', "I cannot rate this image.", '{"score": [4]}'):
        with pytest.raises(JudgeParseError):
            parse_score_list(bad, 2)


def test_imgedit_kris_rise_and_yes_no_replies():
    from smartedit.eval.imgedit import parse_imgedit_reply

    reply = ("Brief reasoning: No texture change applied; shell remains textured.\nPrompt Compliance: 1\n"
             "Visual Seamlessness: 4\nPhysical & Detail Fidelity: 4")
    assert parse_imgedit_reply(reply) == pytest.approx(3.0)
    assert parse_imgedit_reply("Style Fidelity: 2\n**Content Preservation**: 5\nRendering Quality: 5/5") == 4.0
    assert parse_labeled_scores(reply, ("Prompt Compliance", "Visual Seamlessness")) == {
        "Prompt Compliance": 1, "Visual Seamlessness": 4}
    with pytest.raises(JudgeParseError):
        parse_imgedit_reply("Brief reasoning: looks fine")
    with pytest.raises(JudgeParseError):
        parse_imgedit_reply("Prompt Compliance: 9")

    assert parse_json_field('{"consistency_score": 4, "reasoning": "background kept"}', "consistency_score") == 4
    assert parse_json_field("Instruction score: 2 (the color is wrong)", "instruction_score") == 2
    assert parse_json_field('{"instruction_score": 5, "knowledge_score": 3}', "knowledge_score") == 3
    with pytest.raises(JudgeParseError):
        parse_json_field('{"quality_score": 0}', "quality_score")

    assert parse_final_scores("The banana is black and rotten.\n**Final Score**: 5") == [5]
    assert parse_final_scores("Final Scores: 4, 2", count=2) == [4, 2]
    with pytest.raises(JudgeParseError):
        parse_final_scores("Score 5")
    assert parse_yes_no("**Yes**, the left dog was removed.") == 1.0 and parse_yes_no("Answer: no") == 0.0
    with pytest.raises(JudgeParseError):
        parse_yes_no("maybe")


# ---- protocols with a scripted judge -------------------------------------------------------------------------
def _texts(parts):
    return " ".join(p for p in parts if isinstance(p, str))


def _images(parts):
    return [p for p in parts if isinstance(p, Image.Image)]


def test_gedit_sc_pq_overall_and_macro_mean(tmp_path):
    from smartedit.eval.gedit import GEditBench

    data = testing.make_gedit_fixture(tmp_path / "GEdit-Bench", per_task=2)
    bench = GEditBench(data)
    outs = testing.write_outputs(bench, tmp_path / "results" / "mine", skip=("color_alter/en/k0001",))

    def reply(parts):
        if "over-does" in _texts(parts):  # semantic consistency: input + output + instruction
            assert len(_images(parts)) == 2 and "make the red square number" in _texts(parts)
            return '{"score": [8, 6], "reasoning": "x"}'
        assert len(_images(parts)) == 1   # perceptual quality: the output alone
        return '{"score": [9, 7], "reasoning": "z"}'

    judge = testing.ScriptedJudge(reply)
    run = run_benchmark(bench, out=tmp_path / "report", outputs=outs, judge=judge)
    s = run.summary
    assert [r.status for r in run.incomplete] == ["missing_output"]
    ok = [r for r in run.results if r.ok]
    assert len(ok) == 3 and {r.group for r in ok} == {"color_alter", "subject-remove"}
    for r in ok:  # SC = min(8, 6), PQ = min(9, 7), O = sqrt(SC * PQ)
        assert (r.metrics["semantics"], r.metrics["quality"]) == (6, 7)
        assert r.metrics["overall"] == pytest.approx(math.sqrt(42))
        assert [q["question"] for q in r.meta["judge"]] == ["semantic_consistency", "perceptual_quality"]
    groups = s["aggregates"]
    macro = (groups["color_alter"]["metrics"]["overall"]["mean"] + groups["subject-remove"]["metrics"]["overall"]
             ["mean"]) / 2
    assert groups["overall"]["metrics"]["overall"]["mean"] == pytest.approx(macro)
    assert s["run"]["language"] == "en" and groups["overall"]["n_samples"] == 4
    assert any("not comparable" in n and "scripted-judge" in n for n in s["notes"])
    assert s["run"]["judge"]["name"] == "scripted-judge"


def test_imgedit_uses_published_prompts_when_present_and_averages(tmp_path):
    from smartedit.eval.imgedit import ImgEditBench

    data = testing.make_imgedit_fixture(tmp_path / "Basic", prompts=True)
    bench = ImgEditBench(data)
    outs = testing.write_outputs(bench, tmp_path / "edits")
    replies = {"add": "Prompt Compliance: 5\nVisual Seamlessness: 4\nPhysical & Detail Fidelity: 3",
               "remove": "Prompt Compliance: 2\nVisual Seamlessness: 2\nPhysical & Detail Fidelity: 2",
               "style": "I refuse"}

    def reply(parts):
        text = parts[0]
        assert isinstance(text, str) and "<edit_prompt>" not in text and len(_images(parts)) == 2
        return replies[text.split()[2]]

    run = run_benchmark(bench, out=tmp_path / "report", outputs=outs, judge=testing.ScriptedJudge(reply))
    aggs = run.summary["aggregates"]
    assert aggs["add"]["metrics"]["score"]["mean"] == 4.0 and aggs["remove"]["metrics"]["score"]["mean"] == 2.0
    assert aggs["style"]["metrics"]["score"]["n_nan"] == 1
    assert aggs["overall"]["metrics"]["score"]["mean"] == 3.0  # mean of the type means; the unparsed one is n/a
    assert any("prompts.json" in n for n in run.summary["notes"])
    assert any("could not be parsed" in n for n in run.summary["notes"])


def test_kris_dimensions_per_task_and_multi_image(tmp_path):
    from smartedit.eval.kris import KrisBench

    data = testing.make_kris_fixture(tmp_path)
    bench = KrisBench(data)
    outs = testing.write_outputs(bench, tmp_path / "results")

    def reply(parts):
        t = _texts(parts)
        if "knowledge_score" in t:
            assert "copper turns green" in t
            return '{"instruction_score": 4, "knowledge_score": 2, "reasoning": "r"}'
        if "instruction_score" in t:
            n = len(_images(parts))
            return f'{{"instruction_score": {n}, "reasoning": "number of images shown"}}'
        if "consistency_score" in t:
            return '{"consistency_score": 5}'
        return '{"quality_score": 3}'

    run = run_benchmark(bench, out=tmp_path / "report", outputs=outs, judge=testing.ScriptedJudge(reply))
    by = {r.group: r.metrics for r in run.results}
    assert by["chemistry"]["instruction"] == 4 and by["chemistry"]["knowledge"] == 2
    assert by["color_change"]["instruction"] == 2 and math.isnan(by["color_change"]["knowledge"])
    assert by["viewpoint_change"]["instruction"] == 3           # input, output and the ground-truth reference
    assert by["multi-element_composition"]["instruction"] == 3  # both inputs and the output
    assert all(m["consistency"] == 5 and m["quality"] == 3 for m in by.values())
    assert run.summary["aggregates"]["overall"]["metrics"]["knowledge"]["mean"] == 2.0


def test_rise_weighted_score_and_accuracy(tmp_path):
    from smartedit.eval.rise import RISEBench, is_accurate, sample_score

    assert sample_score("causal_reasoning", 5, 4, 3) == pytest.approx(0.3 * 5 + 0.5 * 4 + 0.2 * 3)
    assert sample_score("logical_reasoning", 2, 1, None) == 1.0        # halved, at least 1
    assert sample_score("temporal_reasoning", None, 5, 5, consistency_free=True) == 5
    assert is_accurate("spatial_reasoning", 5, 5, 5) and not is_accurate("spatial_reasoning", 5, 5, 4)

    data = testing.make_rise_fixture(tmp_path)
    bench = RISEBench(data)
    outs = testing.write_outputs(bench, tmp_path / "outputs" / "mine")
    asked = []

    def reply(parts):
        t = _texts(parts)
        asked.append(t.split(".")[0])
        return "looks right\nFinal Score: 5" if "correct answer" in t or "plausibility" in t else "Final Score: 5"

    run = run_benchmark(bench, out=tmp_path / "report", outputs=outs, judge=testing.ScriptedJudge(reply))
    by = {r.group: r for r in run.results}
    assert math.isnan(by["temporal_reasoning"].metrics["consistency"])          # consistency-free
    assert math.isnan(by["logical_reasoning"].metrics["plausibility"])          # no plausibility for puzzles
    assert len(by["logical_reasoning"].meta["judge"]) == 2 and len(by["causal_reasoning"].meta["judge"]) == 3
    assert run.summary["aggregates"]["overall"]["metrics"]["accuracy"]["mean"] == 1.0
    assert all(r.metrics["score"] == 5 for r in run.results)


# ---- every script end to end with a tiny random judge in a real folder -------------------------------------
@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    return testing.save_tiny_vlm(tmp_path_factory.mktemp("judge") / "tiny-llava-judge")


@pytest.mark.parametrize("name", ["gedit", "imgedit", "kris", "rise"])
def test_scripts_end_to_end_with_a_tiny_random_judge(tmp_path, tiny_judge, name, one_torch_thread):
    from smartedit.eval.gedit import GEditBench
    from smartedit.eval.imgedit import ImgEditBench
    from smartedit.eval.kris import KrisBench
    from smartedit.eval.rise import RISEBench

    data, bench = {
        "gedit": lambda: (d := testing.make_gedit_fixture(tmp_path / "g"), GEditBench(d)),
        "imgedit": lambda: (d := testing.make_imgedit_fixture(tmp_path / "i", types=("add", "remove")),
                            ImgEditBench(d)),
        "kris": lambda: (d := testing.make_kris_fixture(tmp_path / "k"), KrisBench(d)),
        "rise": lambda: (d := testing.make_rise_fixture(tmp_path / "r"), RISEBench(d)),
    }[name]()
    outs = testing.write_outputs(bench, tmp_path / "outs")
    report = tmp_path / "report"
    script = load_script(f"eval/{name}.py")
    rc = script.main(["--data", str(data), "--outputs", str(outs), "--judge", str(tiny_judge),
                      "--judge-max-new-tokens", "12", "--out", str(report)])
    assert rc == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["backbones"]["judge"]["name"] == "tiny-llava-judge"
    assert summary["backbones"]["judge"]["arch"].startswith("llava")
    assert any("not comparable" in n for n in summary["notes"])
    samples = json.loads((report / "samples.json").read_text())["samples"]
    assert samples and all(s["status"] == "ok" and s["meta"]["judge"] for s in samples)
    for s in samples:  # random replies: each metric is n/a or inside its range
        for q in s["meta"]["judge"]:
            assert isinstance(q["reply"], str)
        for k, v in s["metrics"].items():
            assert v is None or 0 <= v <= 10, (k, v)
    assert "judge" in (report / "summary.md").read_text()

    with pytest.raises(SystemExit) as e:  # --judge is required
        script.main(["--data", str(data), "--outputs", str(outs), "--out", str(tmp_path / "r2")])
    assert e.value.code == 2
