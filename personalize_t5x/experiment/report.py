"""The experiment's report: the paper's results table with significance, and what it rests on.

`write_report` writes, into one folder:

    report.md     the paper-layout table (BLEU / ROUGE-1 / ROUGE-2 / ROUGE-L per row) with
                  significance marks, the headline comparison, the retrieval-quality table,
                  the dataset table, timings, and the plots
    report.csv    one line per row: metrics, and for each metric the paired t-test against
                  ImmedCtx and against the row it builds on (difference, t, p, significant)
    report.json   everything above, plus per-example scores of every row and of every ranker
    metrics.png   the metric table as bars;  gains.png  each row's mean per-example gain over
                  ImmedCtx with its confidence interval
    report.html   the self-contained browser view (personalize_t5x/experiment/html.py)

Significance (the paper's test): personalize_t5x.tasks.significance.compare, a two-sided
paired t-test on per-example scores, p < alpha (0.01). Each row is tested against ImmedCtx
and against its *parent*: the row it builds on in the paper's chain (`parent_row`).
`copy_start` is a baseline that is not trained: its prediction is the immediate context
itself, the part of the document the model is given.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from typing import Any, Mapping, Sequence

from personalize_t5x.experiment import config as config_lib
from personalize_t5x.io import files as io_lib
from personalize_t5x.tasks import metrics
from personalize_t5x.tasks import prompts

REPORT_VERSION = 3
IMMED_CTX = "immed_ctx"
COPY_START = "copy_start"
METRIC_LABELS = {"bleu": "BLEU", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}
MARK_IMMED = "*"   # significantly different from ImmedCtx
MARK_PARENT = "†"  # significantly different from the row it builds on
TABLE5_ROWS = ("no_ranked_entries", "remove_doc_start", "immed_ctx_at_end")
AUTHOR_PRED = "syn_ctx" + config_lib.MIX_SUFFIX


def parent_row(row: str, present: Sequence[str], *, summary_ranker: str) -> str | None:
    """The row `row` builds on in the paper's chain, among the rows present.

    Rankers and UserID build on ImmedCtx; SumCtx(Ind) on the best ranker (the summary
    ranker); SynCtx(Ind) on SumCtx; AuthorPred on SynCtx; the Table 5 ablations on
    AuthorPred; any other `<v>_author_mix` on `<v>`. When that row was not run, the
    chain is followed further up; ImmedCtx has none.
    """
    if row in (IMMED_CTX, COPY_START):
        return None
    base = config_lib.base_variant(row)
    if base in TABLE5_ROWS:
        chain = [AUTHOR_PRED, "syn_ctx", "sum_ctx", summary_ranker, IMMED_CTX]
    elif row == AUTHOR_PRED:
        chain = ["syn_ctx", "sum_ctx", summary_ranker, IMMED_CTX]
    elif row != base:
        chain = [base, IMMED_CTX]
    elif base in ("syn_ctx", "syn_ctx_ind"):
        chain = ["sum_ctx", summary_ranker, IMMED_CTX]
    elif base in ("sum_ctx", "sum_ctx_ind"):
        chain = [summary_ranker, IMMED_CTX]
    else:  # user_id and the rankers
        chain = [IMMED_CTX]
    return next((r for r in chain if r in present and r != row), None)


@dataclasses.dataclass
class RowScores:
    """One row's predictions on the eval split, scored."""

    row: str
    predictions: list  # significance.Prediction, in example order
    corpus: dict[str, float]  # the paper's numbers (corpus BLEU, mean ROUGE)
    per_example: dict[str, list[float]]


def score_row(row: str, predictions: Sequence[Any]) -> RowScores:
    targets = [p.target for p in predictions]
    outputs = [p.prediction for p in predictions]
    return RowScores(row, list(predictions), metrics.generation_metrics(targets, outputs),
                     metrics.per_example_scores(targets, outputs))


def copy_start_predictions(predictions: Sequence[Any], contexts: Mapping[str, str]) -> list:
    """The baseline that writes only what the model was given: the immediate context."""
    from personalize_t5x.tasks import significance

    return [significance.Prediction(p.example_id, p.target, contexts[p.example_id]) for p in predictions]


def confidence_interval(differences: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """Mean and the two-sided t confidence interval of the mean of paired differences."""
    from scipy import stats

    n = len(differences)
    mean = sum(differences) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _test(a: RowScores, b: RowScores, alpha: float) -> dict[str, dict[str, Any]]:
    """{metric: comparison of b against a} (the paper's paired t-test)."""
    from personalize_t5x.tasks import significance

    rows = significance.compare(a.predictions, b.predictions, alpha=alpha, path_a=a.row, path_b=b.row)
    return {r.metric: {"against": a.row, "difference": r.b - r.a, "mean_difference": r.mean_difference,
                       "t": r.t, "p": r.p, "significant": r.significant} for r in rows}


def _finite(value: float) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def build_report(*, config: config_lib.ExperimentConfig, scores: Mapping[str, RowScores],
                 retrieval: Mapping[str, Any] | None, dataset_stats: Mapping[str, Any],
                 step_timings: Mapping[str, Any], aux_models: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report as one JSON-able dict (what report.json holds)."""
    alpha = config.report.alpha
    present = list(scores)
    rows = []
    for row, row_scores in scores.items():
        entry: dict[str, Any] = {"row": row, "label": "copy the start" if row == COPY_START else config_lib.row_label(row),
                                 "trained": row != COPY_START, "metrics": row_scores.corpus}
        if row != IMMED_CTX and IMMED_CTX in scores:
            entry["vs_immed_ctx"] = _test(scores[IMMED_CTX], row_scores, alpha)
            gains = {}
            for metric in metrics.GENERATION_METRICS:
                diffs = [b - a for a, b in zip(scores[IMMED_CTX].per_example[metric], row_scores.per_example[metric])]
                mean, low, high = confidence_interval(diffs, config.report.confidence)
                gains[metric] = {"mean": mean, "low": low, "high": high}
            entry["gain_over_immed_ctx"] = gains
        parent = parent_row(row, present, summary_ranker=config.retrieval.summary_ranker)
        entry["parent"] = parent
        if parent is not None and parent != IMMED_CTX:
            entry["vs_parent"] = _test(scores[parent], row_scores, alpha)
        elif parent == IMMED_CTX and "vs_immed_ctx" in entry:
            entry["vs_parent"] = entry["vs_immed_ctx"]
        rows.append(entry)
    return {
        "version": REPORT_VERSION,
        "experiment": config.name,
        "config": config.to_json(),
        "eval_split": config.budget.eval_split,
        "examples": len(next(iter(scores.values())).predictions),
        "alpha": alpha,
        "rows": rows,
        "headline": headline(scores, rows, alpha=alpha),
        "per_example": {row: {"example_id": [p.example_id for p in s.predictions], **s.per_example}
                        for row, s in scores.items()},
        "retrieval": retrieval_table(retrieval, alpha=alpha) if retrieval else None,
        "dataset": dict(dataset_stats),
        "aux_models": dict(aux_models or {}),
        "timings": dict(step_timings),
    }


def headline(scores: Mapping[str, RowScores], rows: Sequence[Mapping[str, Any]], *, alpha: float) -> dict[str, Any] | None:
    """Does reading past passages help? The best row that reads them against ImmedCtx
    (trained under the same budget) and against copying the start, on ROUGE-L."""
    readers = [r for r in rows if r["trained"] and r["row"] != IMMED_CTX
               and config_lib.base_variant(r["row"]) not in ("user_id", "no_ranked_entries")]
    if IMMED_CTX not in scores or not readers:
        return None
    best = max(readers, key=lambda r: r["metrics"]["rougeL"])
    vs_immed = best["vs_immed_ctx"]["rougeL"]
    vs_copy = _test(scores[COPY_START], scores[best["row"]], alpha)["rougeL"] if COPY_START in scores else None
    shown = vs_immed["significant"] and vs_immed["difference"] > 0 and (
        vs_copy is None or (vs_copy["difference"] > 0 and vs_copy["significant"]))
    return {"row": best["row"], "label": best["label"], "rougeL": best["metrics"]["rougeL"],
            "immed_ctx_rougeL": scores[IMMED_CTX].corpus["rougeL"],
            "copy_start_rougeL": scores[COPY_START].corpus["rougeL"] if COPY_START in scores else None,
            "vs_immed_ctx": vs_immed, "vs_copy_start": vs_copy, "personalization_shown": bool(shown)}


def retrieval_table(retrieval: Mapping[str, Any], *, alpha: float) -> dict[str, Any]:
    """Retrieval ROUGE per ranker on the eval split, with per-example scores and a paired
    t-test of each ranker against the first one (RecentDoc when computed)."""
    from personalize_t5x.tasks import significance

    (split, by_strategy), = retrieval["splits"].items()
    # in the experiment's order (JSON files sort their keys)
    strategies = [s for s in retrieval.get("strategies", by_strategy) if s in by_strategy]
    reference = strategies[0]
    table = {"split": split, "reference": reference, "rankers": []}
    for strategy in strategies:
        row = by_strategy[strategy]
        entry = {"ranker": strategy, "label": prompts.PAPER_ROWS[strategy],
                 **{m: row[m] for m in metrics.ROUGE_TYPES}, "examples": row["examples"],
                 "empty_ranked_texts": row["empty_ranked_texts"], "per_example": row["per_example"]}
        if strategy != reference:
            tests = {}
            for m in metrics.ROUGE_TYPES:
                t, p = significance.paired_t(by_strategy[reference]["per_example"][m], row["per_example"][m])
                tests[m] = {"t": _finite(t), "p": p, "significant": p < alpha}
            entry["vs_reference"] = tests
        table["rankers"].append(entry)
    return table


# ------------------------------------------------------------------------- rendering


def _cell(entry: Mapping[str, Any], metric: str) -> str:
    value = f"{entry['metrics'][metric]:.2f}"
    marks = ""
    if entry.get("vs_immed_ctx", {}).get(metric, {}).get("significant"):
        marks += MARK_IMMED
    if entry.get("parent") not in (None, IMMED_CTX) and entry.get("vs_parent", {}).get(metric, {}).get("significant"):
        marks += MARK_PARENT
    return value + marks


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _p(value: float) -> str:
    return f"{value:.1e}" if value < 0.001 else f"{value:.3f}"


def render_markdown(report: Mapping[str, Any], *, plots: Mapping[str, str]) -> str:
    cfg = report["config"]
    budget, model = cfg["budget"], cfg["model"]
    out = [f"# Experiment `{report['experiment']}`", ""]
    out.append(f"{report['examples']} {report['eval_split']} examples; every trained row got the same budget: "
               f"{budget['train_steps']} steps of {budget['batch_size']} examples, inputs {budget['inputs_length']} / "
               f"targets {budget['targets_length']} tokens, T5 1.1 emb {model['emb_dim']}, "
               f"{model['num_encoder_layers']}+{model['num_decoder_layers']} layers, "
               f"{'from scratch' if not model['initial_checkpoint'] else 'from ' + model['initial_checkpoint']}, "
               f"{budget['decoding']} decoding, seed {cfg['seed']}.")
    head = report.get("headline")
    if head:
        out += ["", "## Does reading past passages help?", ""]
        v = head["vs_immed_ctx"]
        verdict = "**Yes.**" if head["personalization_shown"] else "**Not shown by this run.**"
        text = (f"{verdict} {head['label']} scores ROUGE-L {head['rougeL']:.2f} against ImmedCtx's "
                f"{head['immed_ctx_rougeL']:.2f} (same budget; paired t-test p = {_p(v['p'])})")
        if head["vs_copy_start"] is not None:
            text += (f" and copy-the-start's {head['copy_start_rougeL']:.2f} "
                     f"(p = {_p(head['vs_copy_start']['p'])})")
        out.append(text + f"; significant means p < {report['alpha']:g}.")
    out += ["", "## Results (the paper's table)", "",
            f"Corpus BLEU and mean ROUGE F (%) on {report['eval_split']}. {MARK_IMMED}: significantly different "
            f"from ImmedCtx, {MARK_PARENT}: from the row it builds on (paired t-test, p < {report['alpha']:g}); "
            "`copy the start` is not trained: it outputs the immediate context.", ""]
    body = []
    for entry in report["rows"]:
        body.append([entry["label"], *(_cell(entry, m) for m in metrics.GENERATION_METRICS),
                     "" if entry["parent"] is None else next(r["label"] for r in report["rows"] if r["row"] == entry["parent"])])
    out.append(_markdown_table(["row", *(METRIC_LABELS[m] for m in metrics.GENERATION_METRICS), "builds on"], body))
    out += ["", "Gain over ImmedCtx (mean per-example difference, "
            f"{int(100 * cfg['report']['confidence'])}% confidence interval):", ""]
    gains_body = []
    for entry in report["rows"]:
        if "gain_over_immed_ctx" in entry:
            g = entry["gain_over_immed_ctx"]
            gains_body.append([entry["label"], *(f"{g[m]['mean']:+.2f} [{g[m]['low']:+.2f}, {g[m]['high']:+.2f}] "
                                                 f"p={_p(entry['vs_immed_ctx'][m]['p'])}"
                                                 for m in metrics.GENERATION_METRICS)])
    if gains_body:
        out.append(_markdown_table(["row", *(METRIC_LABELS[m] for m in metrics.GENERATION_METRICS)], gains_body))
    for name, path in plots.items():
        out += ["", f"![{name}]({os.path.basename(path)})"]
    retrieval = report.get("retrieval")
    if retrieval:
        out += ["", "## Retrieval quality", "",
                f"ROUGE F (%) of each ranker's text against the document the user wrote ({retrieval['split']}); "
                f"per-example scores are in report.json and retrieval_per_example.csv. p: paired t-test against "
                f"{prompts.PAPER_ROWS[retrieval['reference']]}.", ""]
        rbody = []
        for r in retrieval["rankers"]:
            p = r.get("vs_reference", {}).get("rougeL")
            rbody.append([r["label"], f"{r['rouge1']:.2f}", f"{r['rouge2']:.2f}", f"{r['rougeL']:.2f}",
                          str(r["examples"]), str(r["empty_ranked_texts"]), "" if p is None else _p(p["p"])])
        out.append(_markdown_table(["ranker", "ROUGE-1", "ROUGE-2", "ROUGE-L", "examples", "empty", "p (ROUGE-L)"], rbody))
    if report.get("dataset"):
        from personalize_t5x.pipeline import examples as examples_lib

        out += ["", "## Dataset", "", "```", examples_lib.format_stats_table(report["dataset"]), "```"]
    if report.get("aux_models"):
        out += ["", "## Auxiliary models", "",
                "The SumCtx and SynCtx models whose predictions fill `summary_ctx` and `keywords_ctx` "
                "(trained on the weak labels of one seeded half of the training users). Empty: predictions "
                "that came out as no text, per split.", ""]
        out.append(_markdown_table(
            ["model", "steps", "final train loss", *(f"empty ({s})" for s in ("train", "validation", "test"))],
            [[name, str(a.get("step", "")), "" if a.get("loss") is None else f"{a['loss']:.3f}",
              *(f"{a['empty_predictions'][s]} of {a['predictions'][s]}" for s in ("train", "validation", "test"))]
             for name, a in report["aux_models"].items()]))
    if report.get("timings"):
        out += ["", "## Timings", "", "Wall and CPU seconds of each step when it last ran (the CPU figure counts "
                "every core, Beam's worker processes included).", ""]
        out.append(_markdown_table(["step", "wall s", "CPU s"], [[name, f"{t['wall_s']:.1f}", f"{t['cpu_s']:.1f}"]
                                                               for name, t in report["timings"].items()]))
    return "\n".join(out) + "\n"


def render_csv(report: Mapping[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["row", "label", "parent"]
    for m in metrics.GENERATION_METRICS:
        header += [m, f"{m}_vs_immed_ctx_diff", f"{m}_vs_immed_ctx_p", f"{m}_vs_immed_ctx_significant",
                   f"{m}_vs_parent_diff", f"{m}_vs_parent_p", f"{m}_vs_parent_significant"]
    writer.writerow(header)
    for entry in report["rows"]:
        line = [entry["row"], entry["label"], entry["parent"] or ""]
        for m in metrics.GENERATION_METRICS:
            line.append(f"{entry['metrics'][m]:.4f}")
            for key in ("vs_immed_ctx", "vs_parent"):
                test = entry.get(key, {}).get(m)
                line += ["", "", ""] if test is None else [f"{test['difference']:.4f}", f"{test['p']:.6g}",
                                                           str(bool(test["significant"])).lower()]
        writer.writerow(line)
    return buffer.getvalue()


def render_retrieval_csv(retrieval: Mapping[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["example_id", "ranker", *metrics.ROUGE_TYPES])
    for r in retrieval["rankers"]:
        per = r["per_example"]
        for i, example_id in enumerate(per["example_id"]):
            writer.writerow([example_id, r["ranker"], *(f"{per[m][i]:.4f}" for m in metrics.ROUGE_TYPES)])
    return buffer.getvalue()


def plot_metrics(report: Mapping[str, Any], path: str) -> None:
    """Grouped bars: one group per metric, one bar per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = report["rows"]
    x = np.arange(len(metrics.GENERATION_METRICS))
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(8, 4))
    for k, entry in enumerate(rows):
        values = [entry["metrics"][m] for m in metrics.GENERATION_METRICS]
        ax.bar(x + (k - (len(rows) - 1) / 2) * width, values, width, label=entry["label"],
               hatch="//" if not entry["trained"] else None)
    ax.set_xticks(x, [METRIC_LABELS[m] for m in metrics.GENERATION_METRICS])
    ax.set_ylabel("score (%)")
    ax.set_title(f"{report['experiment']}: {report['examples']} {report['eval_split']} examples")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_gains(report: Mapping[str, Any], path: str) -> None:
    """Each row's mean per-example gain over ImmedCtx per metric, with confidence intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [e for e in report["rows"] if "gain_over_immed_ctx" in e]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(metrics.GENERATION_METRICS))
    width = 0.8 / max(len(rows), 1)
    for k, entry in enumerate(rows):
        g = entry["gain_over_immed_ctx"]
        means = np.array([g[m]["mean"] for m in metrics.GENERATION_METRICS])
        errors = np.array([[g[m]["mean"] - g[m]["low"] for m in metrics.GENERATION_METRICS],
                           [g[m]["high"] - g[m]["mean"] for m in metrics.GENERATION_METRICS]])
        ax.bar(x + (k - (len(rows) - 1) / 2) * width, means, width, yerr=errors, capsize=3, label=entry["label"])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [METRIC_LABELS[m] for m in metrics.GENERATION_METRICS])
    ax.set_ylabel("gain over ImmedCtx (points)")
    ax.set_title(f"mean per-example gain, {int(100 * report['config']['report']['confidence'])}% confidence interval")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    with io_lib.atomic_output(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)


def write_report(*, config: config_lib.ExperimentConfig, predictions: Mapping[str, str], examples_dir: str,
                 retrieval_path: str | None, dataset_stats: Mapping[str, Any], output_dir: str,
                 step_timings: Mapping[str, Any], features_dir: str | None = None,
                 aux_models: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Scores every row's predictions and writes the report files; returns their paths."""
    import json

    from personalize_t5x.experiment import html as html_lib
    from personalize_t5x.pipeline import examples as examples_lib
    from personalize_t5x.tasks import significance

    loaded = {row: significance.read_predictions(path) for row, path in predictions.items()}
    first = next(iter(loaded.values()))
    contexts = {e["example_id"]: e["immediate_context"]
                for e in examples_lib.read_examples(examples_dir, config.budget.eval_split)}
    scores = {row: score_row(row, preds) for row, preds in loaded.items()}
    copied = copy_start_predictions(first, contexts)
    scores[COPY_START] = score_row(COPY_START, copied)
    retrieval = None
    if retrieval_path and os.path.exists(retrieval_path):
        with open(retrieval_path, encoding="utf-8") as f:
            retrieval = json.load(f)
    report = build_report(config=config, scores=scores, retrieval=retrieval, dataset_stats=dataset_stats,
                          step_timings=step_timings, aux_models=aux_models)
    os.makedirs(output_dir, exist_ok=True)
    paths = {"markdown": os.path.join(output_dir, "report.md"), "csv": os.path.join(output_dir, "report.csv"),
             "json": os.path.join(output_dir, "report.json"), "metrics_png": os.path.join(output_dir, "metrics.png"),
             "gains_png": os.path.join(output_dir, "gains.png"), "html": os.path.join(output_dir, "report.html")}
    plot_metrics(report, paths["metrics_png"])
    plot_gains(report, paths["gains_png"])
    io_lib.write_json(paths["json"], report)
    with io_lib.atomic_output(paths["csv"]) as f:
        f.write(render_csv(report))
    if report["retrieval"]:
        paths["retrieval_csv"] = os.path.join(output_dir, "retrieval_per_example.csv")
        with io_lib.atomic_output(paths["retrieval_csv"]) as f:
            f.write(render_retrieval_csv(report["retrieval"]))
    with io_lib.atomic_output(paths["markdown"]) as f:
        f.write(render_markdown(report, plots={"metrics": paths["metrics_png"], "gains": paths["gains_png"]}))
    given = html_lib.inputs_given(features_dir, config, [p.example_id for p in first]) if features_dir else {}
    html_lib.write_html(paths["html"], report=report, predictions={**loaded, COPY_START: copied}, given=given,
                        sample_size=config.report.html_examples,
                        plots=[paths["metrics_png"], paths["gains_png"]])
    return paths
