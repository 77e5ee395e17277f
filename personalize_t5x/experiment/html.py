"""report.html: one self-contained file (no server, no network) to read a report by example.

For a seeded sample of eval examples it shows the target beside each row's output, what
that row was given (passage start, ranked entries, summary, keywords: the parts of its
prompt layout) and the per-example scores. The table can be sorted by one row's gain over
another on any metric. The data are embedded as JSON and the table is built by a small
inline script; the plots are embedded as data: URIs. `tests/experiment/test_html_report.py`
renders it in headless Chromium and counts the rows.
"""
from __future__ import annotations

import base64
import html
import json
import os
import random
from typing import Any, Mapping, Sequence

from personalize_t5x.experiment import config as config_lib
from personalize_t5x.tasks import metrics
from personalize_t5x.tasks import prompts

ROW_CLASS = "example"


def inputs_given(features_dir: str, config: config_lib.ExperimentConfig, example_ids: Sequence[str]
                 ) -> dict[str, Any]:
    """{"parts": {row: [[prefix, feature], ...]}, "features": {example_id: {feature: text}}}:
    what each row's prompt held for each example (from the features stage's records)."""
    from personalize_t5x.pipeline import features as features_lib

    parts = {}
    names: set[str] = set()
    for row in config.variants:
        layout = prompts.generation_layout(config_lib.base_variant(row), summary_ranker=config.retrieval.summary_ranker)
        parts[row] = [[part.prefix, part.feature] for part in layout.parts]
        names.update(part.feature for part in layout.parts)
    wanted = set(example_ids)
    texts = {}
    for record in features_lib.read_generation_examples(features_dir, config.budget.eval_split):
        if record["example_id"] in wanted:
            texts[record["example_id"]] = {name: record[name] for name in sorted(names)}
    return {"parts": parts, "features": texts}


def sample_ids(example_ids: Sequence[str], size: int, seed: int) -> list[str]:
    """A seeded sample of example ids, in their original order."""
    if len(example_ids) <= size:
        return list(example_ids)
    chosen = set(random.Random(seed).sample(list(example_ids), size))
    return [i for i in example_ids if i in chosen]


def _data_uri(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top}
table.summary td{text-align:right} table.summary td:first-child{text-align:left}
#examples{font-size:12px;table-layout:fixed;width:100%}
#examples td{word-wrap:break-word}
.score{color:#555;font-size:11px;margin-top:3px}
.gain-pos{color:#0a6b0a}.gain-neg{color:#a31515}
details{margin-top:4px;color:#444} summary{cursor:pointer;color:#06c}
.part b{color:#333} .headline{padding:8px;border-left:4px solid #0a6b0a;background:#f3faf3}
.headline.no{border-color:#a31515;background:#fbf3f3}
img{max-width:48%;margin-right:1%}
"""

_SCRIPT = """
const DATA = JSON.parse(document.getElementById('report-data').textContent);
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
function score(row, id, metric){ return DATA.scores[row][metric][DATA.index[id]]; }
function gain(id){ const s = document.getElementById('sort-a').value, b = document.getElementById('sort-b').value,
  m = document.getElementById('sort-metric').value; return score(s, id, m) - score(b, id, m); }
function render(){
  const ids = DATA.sample.slice();
  const order = document.getElementById('sort-order').value;
  if (order !== 'example') ids.sort((x, y) => order === 'desc' ? gain(y) - gain(x) : gain(x) - gain(y));
  const body = document.querySelector('#examples tbody'); body.innerHTML = '';
  ids.forEach((id, k) => {
    const tr = document.createElement('tr'); tr.className = 'example'; tr.dataset.exampleId = id;
    let cells = `<td>${k + 1}</td><td><code>${esc(id)}</code><div class="score">gain ${gain(id).toFixed(1)}</div></td>`
      + `<td>${esc(DATA.targets[id])}</td>`;
    DATA.rows.forEach(row => {
      const s = DATA.metrics.map(m => `${DATA.labels[m]} ${score(row, id, m).toFixed(1)}`).join(' · ');
      let given = '';
      const parts = (DATA.given.parts || {})[row], feats = (DATA.given.features || {})[id];
      if (parts && feats) given = '<details><summary>given</summary>' + parts.map(p =>
          `<div class="part"><b>${esc(p[0])}:</b> ${esc(feats[p[1]] || '(empty)')}</div>`).join('') + '</details>';
      cells += `<td>${esc(DATA.outputs[row][id])}<div class="score">${s}</div>${given}</td>`;
    });
    tr.innerHTML = cells; body.appendChild(tr);
  });
  document.getElementById('shown').textContent = ids.length;
}
['sort-a','sort-b','sort-metric','sort-order'].forEach(id => document.getElementById(id).addEventListener('change', render));
render();
"""


def render_html(*, report: Mapping[str, Any], predictions: Mapping[str, Sequence[Any]], given: Mapping[str, Any],
                sample_size: int, plots: Sequence[str] = ()) -> str:
    """The whole page as one string."""
    rows = [e["row"] for e in report["rows"]]
    labels = {e["row"]: e["label"] for e in report["rows"]}
    per_example = report["per_example"]
    first = next(iter(per_example.values()))
    example_ids = list(first["example_id"])
    index = {example_id: i for i, example_id in enumerate(example_ids)}
    sample = sample_ids(example_ids, sample_size, report["config"]["seed"])
    some_row = next(iter(predictions.values()))
    targets = {p.example_id: p.target for p in some_row if p.example_id in set(sample)}
    outputs = {}
    for row in rows:
        outputs[row] = {p.example_id: p.prediction for p in predictions[row] if p.example_id in targets}
    data = {
        "rows": rows, "metrics": list(metrics.GENERATION_METRICS),
        "labels": {"bleu": "BLEU", "rouge1": "R-1", "rouge2": "R-2", "rougeL": "R-L"},
        "sample": sample, "index": index, "targets": targets, "outputs": outputs,
        "scores": {row: {m: per_example[row][m] for m in metrics.GENERATION_METRICS} for row in rows},
        "given": {"parts": given.get("parts", {}),
                  "features": {i: f for i, f in given.get("features", {}).items() if i in targets}},
    }
    head = report.get("headline")
    best = head["row"] if head else rows[-1]
    option = lambda value, text, selected: (f'<option value="{html.escape(value)}"'  # noqa: E731
                                            f'{" selected" if selected else ""}>{html.escape(text)}</option>')
    select_rows = lambda name, chosen: "".join(option(r, labels[r], r == chosen) for r in rows)  # noqa: E731
    summary = ["<table class='summary'><tr><th>row</th>" + "".join(
        f"<th>{m}</th>" for m in ("BLEU", "ROUGE-1", "ROUGE-2", "ROUGE-L")) + "<th>builds on</th></tr>"]
    for e in report["rows"]:
        cells = []
        for m in metrics.GENERATION_METRICS:
            mark = ""
            if e.get("vs_immed_ctx", {}).get(m, {}).get("significant"):
                mark += "*"
            if e.get("parent") not in (None, "immed_ctx") and e.get("vs_parent", {}).get(m, {}).get("significant"):
                mark += "†"
            cells.append(f"<td>{e['metrics'][m]:.2f}{mark}</td>")
        parent = labels.get(e["parent"], "") if e["parent"] else ""
        summary.append(f"<tr><td>{html.escape(e['label'])}</td>{''.join(cells)}<td>{html.escape(parent)}</td></tr>")
    summary.append("</table>")
    headline_html = ""
    if head:
        verdict = "Yes" if head["personalization_shown"] else "Not shown by this run"
        headline_html = (f"<p class='headline{'' if head['personalization_shown'] else ' no'}'><b>Does reading past "
                         f"passages help? {verdict}.</b> {html.escape(head['label'])}: ROUGE-L {head['rougeL']:.2f}; "
                         f"ImmedCtx {head['immed_ctx_rougeL']:.2f} (p = {head['vs_immed_ctx']['p']:.1e})"
                         + (f"; copy the start {head['copy_start_rougeL']:.2f}" if head['copy_start_rougeL'] is not None
                            else "") + ".</p>")
    images = "".join(f"<img alt='{html.escape(os.path.basename(p))}' src='{_data_uri(p)}'>" for p in plots
                     if os.path.exists(p))
    columns = "".join(f"<th>{html.escape(labels[r])}</th>" for r in rows)
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(report['experiment'])}: report</title>
<style>{_STYLE}</style></head><body>
<h1>Experiment <code>{html.escape(report['experiment'])}</code>: {report['examples']} {html.escape(report['eval_split'])} examples</h1>
{headline_html}
<h2>Results</h2>
<p>*: significantly different from ImmedCtx; †: from the row it builds on (paired t-test, p &lt; {report['alpha']:g}).</p>
{''.join(summary)}
<div>{images}</div>
<h2>Examples (<span id="shown">0</span> of {len(example_ids)}, seeded sample)</h2>
<p>Sort by the gain of
<select id="sort-a">{select_rows('a', best)}</select> over
<select id="sort-b">{select_rows('b', 'immed_ctx' if 'immed_ctx' in rows else rows[0])}</select> on
<select id="sort-metric">{''.join(option(m, n, m == 'rougeL') for m, n in (('bleu', 'BLEU'), ('rouge1', 'ROUGE-1'), ('rouge2', 'ROUGE-2'), ('rougeL', 'ROUGE-L')))}</select>,
<select id="sort-order"><option value="desc" selected>largest gain first</option><option value="asc">smallest first</option><option value="example">in example order</option></select></p>
<table id="examples"><thead><tr><th style="width:2em">#</th><th style="width:9em">example</th><th>target</th>{columns}</tr></thead><tbody></tbody></table>
<script type="application/json" id="report-data">{payload}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


def write_html(path: str, **kwargs) -> str:
    from personalize_t5x.io import files as io_lib

    with io_lib.atomic_output(path) as f:
        f.write(render_html(**kwargs))
    return path
