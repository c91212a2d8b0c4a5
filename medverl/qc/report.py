"""`medverl qc report`: one self-contained HTML page for the people who check the scorer, and their agreement.

The page has a histogram per dimension (inline SVG), a table per subset, and a stratified sample (per subset, the
lowest-, middle- and highest-scoring records) with each record's image, text, scores and rationale. The sample is
also exported for reviewers (``review_sample.jsonl``, a ``human_pass`` field to fill in with true/false); importing
their labels reports how often people and the scorer agree at a threshold on the mean score.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
from collections import defaultdict
from pathlib import Path


from medverl.arguments import EXIT_OK, unit_float
from medverl.data.job import Reject, write_text_atomically
from medverl.data.prepared import open_prepared
from medverl.data.records import iter_jsonl, json_object
from medverl.errors import ConfigError
from medverl.qc.rules import DIMENSIONS

logger = logging.getLogger(__name__)

BAR_COLOUR = "#d62728"  # histogram bars (the report test looks for this colour)
HEADER_COLOUR = "#1f77b4"  # sample table header
BINS = 10


def load_scores(scores_dir: str | Path) -> list[dict]:
    """Every row of a finished ``medverl qc score`` directory."""
    rows = list(open_prepared(scores_dir, ("qc_scores",)).rows())
    if not rows:
        raise ConfigError(f"{scores_dir}: its qc score job scored no record")
    return rows


def _histogram_svg(values: list[float], title: str) -> str:
    counts = [0] * BINS
    for v in values:
        counts[min(int(v * BINS), BINS - 1)] += 1
    top = max(counts) or 1
    bars = "".join(
        f'<rect x="{30 + i * 26}" y="{130 - 110 * c / top:.1f}" width="22" height="{110 * c / top:.1f}" '
        f'fill="{BAR_COLOUR}"><title>{i / BINS:.1f}-{(i + 1) / BINS:.1f}: {c}</title></rect>'
        for i, c in enumerate(counts)
    )
    return (f'<figure><figcaption>{html.escape(title)} (n={len(values)})</figcaption><svg width="300" height="150" '
            f'role="img"><line x1="28" y1="131" x2="292" y2="131" stroke="#333"/>{bars}'
            '<text x="28" y="146" font-size="10">0</text><text x="282" y="146" font-size="10">1</text></svg></figure>')


def stratified_sample(rows: list[dict], per_stratum: int = 2) -> list[dict]:
    """Per subset, the `per_stratum` lowest-, middle- and highest-scoring records (deterministic)."""
    by_subset = defaultdict(list)
    for r in rows:
        if r["mean"] is not None:
            by_subset[r["subset"]].append(r)
    sample = []
    for subset in sorted(by_subset):
        ranked = sorted(by_subset[subset], key=lambda r: (r["mean"], r["source"]))
        middle = max(0, len(ranked) // 2 - per_stratum // 2)
        picks = ranked[:per_stratum] + ranked[middle : middle + per_stratum] + ranked[-per_stratum:]
        sample += list({id(r): r for r in picks}.values())
    return sample


def agreement(sample: list[dict], labels_path: str | Path, threshold: float) -> dict:
    """How often reviewers' pass/fail (``human_pass``) matches ``mean >= threshold``, over the labelled records.

    Only labels of sampled records are kept (a labels file of any length costs no memory).

    Raises:
        ConfigError: the file cannot be read, or labels none of the sampled records true/false.
    """
    wanted = {r["source"] for r in sample}
    labels, unreadable, skipped = {}, 0, []
    for record in iter_jsonl(labels_path):
        item = json_object(record, ("source",))
        if isinstance(item, Reject) or not isinstance(item["source"], str):
            unreadable += 1
            if len(skipped) < 10:
                skipped.append(record.source)
        elif item["source"] in wanted and isinstance(item.get("human_pass"), bool):
            labels[item["source"]] = item["human_pass"]
    if unreadable:
        logger.warning("%s: %d line(s) are not label objects with a source, skipped: %s", labels_path,
                       unreadable, ", ".join(skipped))
    pairs = [(labels[r["source"]], r["mean"] >= threshold) for r in sample if r["source"] in labels]
    if not pairs:
        raise ConfigError(f"{labels_path}: no line labels a sampled record: each needs the \"source\" of a line of "
                          "review_sample.jsonl and \"human_pass\": true or false")
    agree = sum(1 for human, scorer in pairs if human == scorer)
    return {"labelled": len(pairs), "agree": agree, "agreement": agree / len(pairs), "threshold": threshold,
            "people_pass_scorer_fails": sum(1 for h, s in pairs if h and not s),
            "people_fail_scorer_passes": sum(1 for h, s in pairs if not h and s)}


def write_report(scores_dir: str | Path, output: str | Path, *, labels: str | Path | None = None,
                 threshold: float = 0.5, per_stratum: int = 2) -> dict:
    """Write ``report.html`` and ``review_sample.jsonl`` into `output`; returns the agreement when `labels`."""
    rows = load_scores(scores_dir)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    sample = stratified_sample(rows, per_stratum)
    write_text_atomically(output / "review_sample.jsonl", "".join(
        json.dumps({"source": r["source"], "subset": r["subset"], "text": r["text"], "mean": r["mean"],
                    "human_pass": None}, ensure_ascii=False) + "\n" for r in sample))
    result = agreement(sample, labels, threshold) if labels else {}
    dims = [d for d in (*DIMENSIONS, "mean") if any(r[d] is not None for r in rows)]
    histograms = "".join(_histogram_svg([r[d] for r in rows if r[d] is not None], d) for d in dims)
    subsets = defaultdict(list)
    for r in rows:
        subsets[r["subset"]].append(r)
    subset_rows = "".join(
        f"<tr><td>{html.escape(s)}</td><td>{len(rs)}</td>"
        + "".join(f"<td>{_mean([r[d] for r in rs])}</td>" for d in dims)
        + f"<td>{sum(1 for r in rs if r['status'] != 'scored')}</td></tr>"
        for s, rs in sorted(subsets.items())
    )
    sample_rows = "".join(
        "<tr>"
        + (f'<td><img src="data:image/jpeg;base64,{base64.b64encode(r["thumbnail"]).decode()}" width="96"></td>'
           if r["thumbnail"] else "<td>-</td>")
        + f"<td>{html.escape(r['subset'])}<br><small>{html.escape(r['source'])}</small></td>"
        + f"<td class=text>{html.escape(r['text'][:600])}</td>"
        + "".join(f"<td>{'-' if r[d] is None else f'{r[d]:.2f}'}</td>" for d in dims)
        + f"<td>{html.escape(r['rationale'])}</td></tr>"
        for r in sample
    )
    agreement_html = "" if not result else (
        f"<h2>Agreement with reviewers</h2><p>{result['agree']} of {result['labelled']} labelled records agree "
        f"({100 * result['agreement']:.0f}%) at mean &ge; {threshold}; people pass / scorer fails: "
        f"{result['people_pass_scorer_fails']}, people fail / scorer passes: {result['people_fail_scorer_passes']}.</p>")
    header = "".join(f"<th>{d}</th>" for d in dims)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>medverl data quality</title><style>
body {{ font-family: sans-serif; margin: 16px; }} figure {{ display: inline-block; margin: 4px 12px; }}
table {{ border-collapse: collapse; margin: 8px 0; }} td, th {{ border: 1px solid #ccc; padding: 3px 6px; }}
#sample th {{ background: {HEADER_COLOUR}; color: white; }} td.text {{ max-width: 420px; font-size: 12px; }}
</style></head><body><h1>Data quality: {len(rows)} records</h1>
<h2>Score per dimension</h2><div id="histograms">{histograms}</div>
<h2>Subsets</h2><table id="subsets"><tr><th>subset</th><th>n</th>{header}<th>not scored</th></tr>{subset_rows}</table>
{agreement_html}
<h2>Sample for review</h2><table id="sample"><tr><th>image</th><th>subset</th><th>text</th>{header}<th>rationale</th></tr>
{sample_rows}</table></body></html>"""
    write_text_atomically(output / "report.html", page)
    return result


def _mean(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{sum(known) / len(known):.3f}" if known else "-"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``medverl qc report``'s arguments."""
    parser.add_argument("scores", help="a medverl qc score output directory")
    parser.add_argument("--output", required=True, help="directory for report.html and review_sample.jsonl")
    parser.add_argument("--labels", help="review_sample.jsonl with human_pass filled in")
    parser.add_argument("--threshold", type=unit_float, default=0.5, help="mean score that counts as a pass")


def run_command(args: argparse.Namespace) -> int:
    """Run ``medverl qc report``."""
    result = write_report(args.scores, args.output, labels=args.labels, threshold=args.threshold)
    print(f"report -> {Path(args.output) / 'report.html'}; sample for reviewers -> "
          f"{Path(args.output) / 'review_sample.jsonl'}")
    if result:
        print(f"agreement with reviewers: {result['agree']}/{result['labelled']} ({100 * result['agreement']:.0f}%)")
    return EXIT_OK
