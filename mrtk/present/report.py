"""`mrtk report`: a run at a glance, as one self-contained HTML file or a folder of PNGs.

Everything is read from the run's database (read-only) and drawn with matplotlib (Agg);
the HTML inlines each chart as a base64 PNG and carries no script, stylesheet or font from
anywhere else, so it opens offline and makes no network request.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from mrtk.store.reads import report_data


@dataclass
class Section:
    key: str
    title: str
    points: int  # how many data values the chart shows (0: nothing to draw)
    figure: object | None  # a matplotlib Figure, or None when there is no data
    note: str = ""


def collect(run_dir: Path) -> dict:
    """All numbers the report shows, read from the run database (store/reads.py)."""
    return report_data(run_dir)


def integer_ticks(*axes) -> None:
    """Axes that count iterations or steps get whole-number ticks only (no 1.2, 1.4, ...)."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def interval_lines(
    ax, series: dict[str, list[tuple]], *, percent: bool, reference: tuple[float, str] | None = None
) -> None:
    """One line per series across iterations, with its 95% interval as error bars: series name ->
    [(iteration, value, ci_low, ci_high)] (None bounds: no bar). `percent`: a 0-100 axis;
    `reference`: (y, label) drawn dashed (50, "chance" for agreement with humans)."""
    for name, pts in series.items():
        pts = sorted(pts)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        lo = [p[1] - p[2] if p[2] is not None else 0.0 for p in pts]
        hi = [p[3] - p[1] if p[3] is not None else 0.0 for p in pts]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4, label=name)
    if reference is not None:
        ax.axhline(reference[0], color="grey", linestyle="--", linewidth=1, label=reference[1])
    if percent:
        ax.set_ylim(0, 100)
    integer_ticks(ax)
    if series:
        ax.legend(fontsize="small")


def _by_iteration(rows: list[dict], key: str) -> dict[int, list]:
    out: dict[int, list] = {}
    for r in rows:
        out.setdefault(r["iteration"], []).append(r[key])
    return out


def sections(d: dict) -> list[Section]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def fig(w=7.0, h=3.2, cols=1):
        f, ax = plt.subplots(1, cols, figsize=(w, h), constrained_layout=True)
        return f, ax

    out: list[Section] = []

    scores = _by_iteration(d["scores"], "score")
    f, ax = fig()
    for it, vals in sorted(scores.items()):
        ax.hist(vals, bins=20, range=(0, max(5, max(vals))), histtype="step", linewidth=2, label=f"iteration {it}")
    ax.set(xlabel="judge score", ylabel="judgements")
    if scores:
        ax.legend()
    out.append(Section("score_hist", "Judge score distribution", sum(map(len, scores.values())), f))

    f, ax = fig()
    its = [r["iteration"] for r in d["unparsed"]]
    ax.bar([str(i) for i in its], [r["unparsed"] / r["n"] for r in d["unparsed"]])
    ax.set(xlabel="iteration", ylabel="share unparsed", ylim=(0, 1))
    out.append(
        Section(
            "unparsed",
            "Share of unparsed judgements",
            len(its),
            f,
            ", ".join(f"it{r['iteration']}: {r['unparsed']} of {r['n']}" for r in d["unparsed"]),
        )
    )

    lengths = _by_iteration(d["lengths"], "n_chars")
    f, ax = fig()
    if lengths:
        ax.boxplot([lengths[i] for i in sorted(lengths)], tick_labels=[str(i) for i in sorted(lengths)], showmeans=True)
    ax.set(xlabel="iteration", ylabel="response length (characters)")
    out.append(
        Section(
            "length",
            "Response length",
            sum(map(len, lengths.values())),
            f,
            ", ".join(f"it{i}: mean {sum(v) / len(v):.0f}" for i, v in sorted(lengths.items())),
        )
    )

    f, ax = fig(8, 3.6)
    labels = sorted({(r["iteration"], r["kind"]) for r in d["pairs"]})
    reasons = sorted({r["reason"] for r in d["pairs"]}, key=lambda x: (x != "ok", x))
    bottom = [0] * len(labels)
    for reason in reasons:
        vals = [
            sum(r["n"] for r in d["pairs"] if (r["iteration"], r["kind"]) == lab and r["reason"] == reason)
            for lab in labels
        ]
        ax.bar(
            [f"it{i} {k}" for i, k in labels],
            vals,
            bottom=bottom,
            label="kept" if reason == "ok" else f"dropped: {reason}",
        )
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set(ylabel="prompts")
    if labels:
        ax.legend(fontsize=7)
    out.append(Section("pairs", "Pairs kept and dropped by reason", sum(r["n"] for r in d["pairs"]), f))

    f, ax = fig()
    pl = d["pair_lengths"]
    xs = range(len(pl))
    ax.bar([x - 0.2 for x in xs], [r["chosen"] for r in pl], width=0.4, label="chosen")
    ax.bar([x + 0.2 for x in xs], [r["rejected"] for r in pl], width=0.4, label="rejected")
    ax.set_xticks(list(xs), [f"it{r['iteration']} {r['kind']}" for r in pl])
    ax.set(ylabel="mean length (characters)")
    if pl:
        ax.legend()
    out.append(Section("chosen_rejected_length", "Chosen vs rejected length (kept pairs)", 2 * len(pl), f))

    f, (a1, a2) = fig(9, 3.2, cols=2)
    for it in sorted({r["iteration"] for r in d["train"]}):
        rs = [r for r in d["train"] if r["iteration"] == it]
        a1.plot([r["step"] for r in rs], [r["loss"] for r in rs], marker="o", label=f"iteration {it}")
        a2.plot([r["step"] for r in rs], [r["reward_margin"] for r in rs], marker="o", label=f"iteration {it}")
    a1.set(xlabel="step", ylabel="DPO loss")
    a2.set(xlabel="step", ylabel="reward margin")
    integer_ticks(a1, a2)
    if d["train"]:
        a1.legend()
    out.append(Section("dpo", "DPO loss and reward margin per step", len(d["train"]), f))

    f, ax = fig()
    mb = d["meta_bias"]
    ax.plot(
        [r["iteration"] for r in mb], [r["first_position_share"] for r in mb], marker="o", label="first position wins"
    )
    ax.plot([r["iteration"] for r in mb], [r["higher_score_share"] for r in mb], marker="s", label="higher score wins")
    ax.set(xlabel="iteration", ylabel="share of battles", ylim=(0, 1))
    integer_ticks(ax)
    if mb:
        ax.legend()
    out.append(
        Section(
            "meta_bias",
            "Meta-judge biases (paper Table 5)",
            len(mb),
            f,
            "; ".join(
                f"it{r['iteration']}: first {r['first_position_share']:.0%}, higher score "
                + ("-" if r["higher_score_share"] is None else f"{r['higher_score_share']:.0%}")
                + f" of {r['n']}"
                for r in mb
            ),
        )
    )

    spreads = _by_iteration(d["elo"], "spread")
    f, ax = fig()
    if spreads:
        ax.boxplot([spreads[i] for i in sorted(spreads)], tick_labels=[str(i) for i in sorted(spreads)])
    ax.set(xlabel="iteration", ylabel="Elo spread per response (max - min)")
    out.append(Section("elo", "Elo spread", sum(map(len, spreads.values())), f))

    if d["eval"]:
        f, ax = fig()
        series, shown = eval_series(d["eval"])
        interval_lines(
            ax, series, percent=True, reference=(50.0, "chance") if any("agreement" in k for k in series) else None
        )
        ax.set(xlabel="iteration (0 = seed model)", ylabel="percent")
        out.append(
            Section(
                "eval",
                "Evaluation results per iteration",
                shown,
                f,
                "one line per evaluation across model iterations; bars: 95% intervals; dashed: chance for agreement",
            )
        )
    else:
        out.append(Section("eval", "Evaluation results", 0, None, "no evaluation recorded for this run yet"))
    drift = [r for r in d["eval"] if r["eval"] == "frozen" and r["metric"] == "mean_shift" and r["value"] is not None]
    if drift:
        f, ax = fig()
        interval_lines(
            ax,
            {
                "frozen set: mean score shift from M1": [
                    (r["iteration"] + 1, r["value"], r["ci_low"], r["ci_high"]) for r in drift
                ]
            },
            percent=False,
            reference=(0.0, "no shift"),
        )
        ax.set(xlabel="model M_t", ylabel="score points")
        out.append(
            Section(
                "drift",
                "Judge drift on the frozen set",
                len(drift),
                f,
                "M_t re-judges the same iteration-1 responses; bars: 95% intervals; dashed: no shift",
            )
        )
    truth = [r for r in d["eval"] if r["eval"] == "truth" and r["metric"] in TRUTH and r["value"] is not None]
    if truth:
        f, ax = fig()
        lines: dict[str, list[tuple]] = {}
        for r in sorted(truth, key=lambda r: r["iteration"]):
            lo, hi = r.get("ci_low"), r.get("ci_high")
            lines.setdefault(TRUTH[r["metric"]], []).append(
                (r["iteration"], 100 * r["value"], None if lo is None else 100 * lo, None if hi is None else 100 * hi)
            )
        interval_lines(ax, lines, percent=True, reference=(50.0, "chance (judge, meta-judge)"))
        ax.set(xlabel="model M_t", ylabel="percent")
        out.append(
            Section(
                "truth",
                "Against the truth (IFEval checks)",
                len(truth),
                f,
                "pass rates of M_t's answers, and how often the judge, the meta-judge and the DPO pairs side with "
                "the checks; bars: 95% intervals (docs/METHOD.md, Ground truth)",
            )
        )
    return out


# The truth numbers the report draws (evals/truth.py), with their legend labels.
TRUTH = {
    "actor_strict": "actor: answers passing (strict)",
    "heldout_strict": "held-out slice: answers passing (strict)",
    "judge_accuracy": "judge: ranks pass over fail",
    "meta_accuracy": "meta-judge: prefers the truer score",
    "right_pairs": "DPO pairs: chosen passes, rejected fails",
}

HEADLINE = ("win_rate", "length_controlled_win_rate", "agreement")


def eval_series(rows: list[dict]) -> tuple[dict[str, list[tuple]], int]:
    """Headline eval numbers as series across iterations: one per eval, metric and judge, the judge
    without its model version (the probe's judge is M_t itself, so `...:M1`, `...:M2` are one line).
    Agreement is a fraction, shown in percent like the win rates."""
    from mrtk.rows import parse_version

    series: dict[str, list[tuple]] = {}
    n = 0
    for r in rows:
        if r["metric"] not in HEADLINE or r["value"] is None:
            continue
        base, _, tail = str(r["judge"]).rpartition(":")
        judge = base if base and parse_version(tail) else str(r["judge"])
        scale = 100.0 if r["metric"] == "agreement" else 1.0
        lo, hi = r.get("ci_low"), r.get("ci_high")
        series.setdefault(f"{r['eval']} {r['metric']} ({judge})", []).append(
            (r["iteration"], r["value"] * scale, None if lo is None else lo * scale, None if hi is None else hi * scale)
        )
        n += 1
    return series, n


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=110)
    plt.close(figure)
    return buf.getvalue()


def _judge_health(d: dict) -> str:
    """Judge health per iteration (probe.file, probe.frozen): agreement with humans, drift,
    saturation and ties with their 95% intervals, and a one-line verdict per iteration."""
    from mrtk.present.summary import judge_health_lines

    iterations = sorted({r["iteration"] for r in d["stages"] if r["iteration"] >= 1})
    rows = [
        {"iteration": it, "what": label, "value": text}
        for it in iterations
        for label, text in judge_health_lines(d["eval"], it)
    ]
    if not rows:
        return (
            "<section id='judge_health'><h2>Judge health</h2><p class='note'>No probe in this run: set probe.file "
            "(human-labelled pairs) and probe.frozen (responses re-judged every iteration).</p></section>"
        )
    return (
        f"<section id='judge_health' data-points='{len(rows)}'><h2>Judge health</h2><p class='note'>M_t judges the human probe "
        "and the frozen iteration-1 responses at every iteration; [low, high] are 95% intervals; the verdict compares M_t's "
        f"agreement with M_t-1's on the same pairs (paired bootstrap).</p>{_table(rows)}</section>"
    )


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


CSS = """body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
pre{background:#f6f6f6;padding:8px;font-size:12px;max-height:320px;overflow:auto}section{margin:1.5em 0}
.note{color:#555;font-size:13px}img{max-width:100%}"""


def render_html(run_dir: Path) -> str:
    d = collect(run_dir)
    run = d["run"]
    config = json.loads(run["config"]) if isinstance(run["config"], str) else run["config"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>mrtk report {html.escape(run['run_id'])}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>mrtk run {html.escape(run['run_id'])}</h1>",
        f"<section id='header'><p>status <b>{html.escape(str(run['status']))}</b>, seed {run['seed']}, "
        f"base model {html.escape(str(run['base_model']))}, created {run['created_at']}, git {html.escape(str(run['git_rev']))}</p>",
        f"<h3>Model lineage</h3>{_table(d['lineage'])}<h3>Stage timings (s)</h3>{_table(d['stages'])}",
        f"<h3>Config</h3><pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>",
        f"<h3>Versions</h3><pre>{html.escape(str(run['versions']))}</pre></section>",
    ]
    parts.append(_judge_health(d))
    for s in sections(d):
        parts.append(f"<section id='{s.key}' data-points='{s.points}'><h2>{html.escape(s.title)}</h2>")
        if s.note:
            parts.append(f"<p class='note'>{html.escape(s.note)}</p>")
        if s.figure is not None:
            parts.append(
                f"<img alt='{html.escape(s.title)}' src='data:image/png;base64,{base64.b64encode(_png(s.figure)).decode()}'>"
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_pngs(run_dir: Path, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for s in sections(collect(run_dir)):
        if s.figure is not None:
            path = out_dir / f"{s.key}.png"
            path.write_bytes(_png(s.figure))
            written.append(path)
    return written
