"""`personalize-t5x compare`: paired t-test per metric; refuses files over different examples."""
from __future__ import annotations

import json

import pytest
import sacrebleu
from scipy import stats

from personalize_t5x import cli
from personalize_t5x.tasks import significance

WORDS = "the grind was too coarse so the espresso tasted sour and thin but milk helped a lot".split()


def targets(n=40):
    return {f"u{i % 5}/d{i}": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(12)) for i in range(n)}


def write(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def good_and_bad(tmp_path):
    """A copies most of the target; B keeps only a few words: a clear, consistent gap."""
    t = targets()
    a = [{"example_id": i, "target": s, "prediction": " ".join(s.split()[: 8 + k % 4])}
         for k, (i, s) in enumerate(t.items())]
    b = [{"example_id": i, "reference": s, "prediction": " ".join(s.split()[k % 3: 5 + k % 2])}
         for k, (i, s) in reversed(list(enumerate(t.items())))]
    return write(tmp_path / "a.jsonl", a), write(tmp_path / "b.jsonl", b)


def test_detects_significant_difference(tmp_path, capsys):
    a, b = good_and_bad(tmp_path)
    assert cli.main(["compare", a, b, "--json", str(tmp_path / "cmp.json")]) == 0
    out = capsys.readouterr().out
    assert "40 examples" in out
    rows = json.loads((tmp_path / "cmp.json").read_text())["metrics"]
    assert [r["metric"] for r in rows] == ["bleu", "rouge1", "rouge2", "rougeL"]
    for row in rows:
        assert row["significant"] and row["p"] < 0.01 and row["b"] < row["a"] and -1e9 < row["t"] < 0
    for line in out.splitlines()[4:]:
        assert line.rstrip().endswith("yes")


def test_t_statistic_equals_scipy_on_direct_scores(tmp_path):
    t = targets(12)
    a = [{"example_id": i, "target": s, "prediction": " ".join(s.split()[: 4 + k % 7])} for k, (i, s) in enumerate(t.items())]
    b = [{"example_id": i, "target": s, "prediction": " ".join(s.split()[2: 9 + k % 3])} for k, (i, s) in enumerate(t.items())]
    rows = significance.compare(significance.read_predictions(write(tmp_path / "a", a)),
                                significance.read_predictions(write(tmp_path / "b", b)))
    bleu_a = [sacrebleu.sentence_bleu(r["prediction"], [r["target"]], tokenize="intl").score for r in a]
    bleu_b = [sacrebleu.sentence_bleu(r["prediction"], [r["target"]], tokenize="intl").score for r in b]
    expected = stats.ttest_rel(bleu_b, bleu_a)
    assert rows[0].metric == "bleu"
    assert rows[0].t == pytest.approx(expected.statistic)
    assert rows[0].p == pytest.approx(expected.pvalue)
    assert rows[0].significant == (expected.pvalue < 0.01)


def test_constant_difference(tmp_path):
    t = targets(6)
    a = [{"example_id": i, "target": s, "prediction": s} for i, s in t.items()]
    b = [{"example_id": i, "target": s, "prediction": ""} for i, s in t.items()]
    rows = significance.compare(significance.read_predictions(write(tmp_path / "a", a)),
                                significance.read_predictions(write(tmp_path / "b", b)))
    assert all(r.t == float("-inf") and r.p == 0.0 and r.significant for r in rows)


def test_identical_systems_are_not_significant(tmp_path):
    a, _ = good_and_bad(tmp_path)
    rows = significance.compare(significance.read_predictions(a), significance.read_predictions(a))
    assert all(r.p == 1.0 and not r.significant and r.a == r.b for r in rows)


def test_refuses_different_example_ids(tmp_path, capsys):
    a, b = good_and_bad(tmp_path)
    lines = open(b, encoding="utf-8").read().splitlines()
    b_short = write(tmp_path / "b_short.jsonl", [json.loads(x) for x in lines[1:]])
    assert cli.main(["compare", a, b_short]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and "different examples: 1 only in" in err


def test_refuses_different_targets_and_duplicates(tmp_path, capsys):
    a, _ = good_and_bad(tmp_path)
    records = [json.loads(x) for x in open(a, encoding="utf-8")]
    changed = [dict(records[0], target="another text")] + records[1:]
    assert cli.main(["compare", a, write(tmp_path / "c.jsonl", changed)]) == 2
    assert "has a different target" in capsys.readouterr().err
    assert cli.main(["compare", a, write(tmp_path / "d.jsonl", records + records[:1])]) == 2
    assert "d.jsonl:41: field 'example_id': duplicate id" in capsys.readouterr().err
    assert cli.main(["compare", a, write(tmp_path / "e.jsonl", [{"example_id": "x", "target": "y"}])]) == 2
    assert "e.jsonl:1: field 'prediction': missing or not a string" in capsys.readouterr().err


def test_write_and_read_predictions(tmp_path):
    rows = [significance.Prediction("u/1", "a target", "a guess"), significance.Prediction("u/2", "t", "")]
    path = str(tmp_path / "p.jsonl.gz")
    assert significance.write_predictions(path, rows) == 2
    assert significance.read_predictions(path) == rows
