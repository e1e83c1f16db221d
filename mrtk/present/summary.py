"""Per-iteration summaries, read back from the run database (so a resumed run shows the same)."""

from __future__ import annotations

from rich.table import Table

from mrtk.store import RunStore


def _f(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def iteration_table(store: RunStore, it: int) -> Table:
    s = store.iteration_numbers(it)
    table = Table(title=f"iteration {it}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    r, j, m, t = s["responses"], s["judgements"], s["meta"], s["train"]
    table.add_row(
        "responses", f"{r['n']} ({r['dups'] or 0} duplicates), mean length {_f(r['mean_chars'], '{:.0f}')} chars"
    )
    table.add_row("judgements", f"{j['n']}, {j['n'] - j['parsed']} unparsed, mean score {_f(j['mean_score'])}")
    if m["n"]:
        table.add_row(
            "meta-judgements",
            f"{m['n']}, {m['n'] - m['parsed']} unparsed, first-position wins {_f(m['first_pos'], '{:.0%}')}",
        )
    for p in s["pairs"]:
        table.add_row(f"{p['kind']} pairs {p['status']}", f"{p['n']}  ({p['reason']})")
    if s["future"]:
        table.add_row("future-guided chosen", _future(s["future"], it))
    table.add_row(
        "DPO",
        f"{t['steps']} steps, loss {_f(t['first_loss'])} -> {_f(t['last_loss'])}, reward margin {_f(t['last_margin'])}"
        + _smoothing(t["smoothing"]),
    )
    health = store.health_results()
    for label, text in judge_health_lines(health, it):
        table.add_row(label, text)
    truth = {r["metric"]: r for r in store.truth_results() if r["iteration"] == it}
    for metric, label in TRUTH_LINES:
        if metric in truth and truth[metric]["n"]:
            table.add_row(label, f"{_ci(truth[metric])} (n={truth[metric]['n']})")
    return table


def _future(rows: dict, it: int) -> str:
    """The temporary next model's DPO and how many kept actor pairs took its sample as chosen."""
    trained, first, last = (rows.get(("train", m)) for m in ("pairs_trained", "loss_first", "loss_last"))
    share = rows.get(("chosen", "future_chosen_share"))
    text = (
        f"F{it + 1} trained on {trained['value']:.0f} anchored pairs, loss {_f(first['value'])} -> {_f(last['value'])}"
        if trained
        else f"F{it + 1}"
    )
    if share and share["n"]:
        text += f"; its sample is the chosen one in {share['value']:.0%} of {share['n']} actor pairs"
    return text


def _smoothing(row: dict | None) -> str:
    """Conservative DPO's applied e, when not 0; reversed pairs (e above 0.5) make the margin theirs."""
    if not row or not row["e"]:
        return ""
    return f", label smoothing {row['e']:.3f}" + (
        " (pairs reversed: margin of rejected over chosen)" if row["reversed"] else ""
    )


# The truth numbers (evals/truth.py) the iteration table shows, when a run has checked prompts.
TRUTH_LINES = (
    ("actor_strict", "truth: actor pass"),
    ("heldout_strict", "truth: held-out pass"),
    ("heldout_change_M1", "truth: held-out vs M1"),
    ("judge_accuracy", "truth: judge accuracy"),
    ("meta_accuracy", "truth: meta-judge accuracy"),
    ("right_pairs", "truth: right pairs"),
)


def _ci(row: dict) -> str:
    lo, hi = row.get("ci_low"), row.get("ci_high")
    return f"{_f(row['value'])} [{_f(lo)}, {_f(hi)}]" if lo is not None else _f(row["value"])


def judge_health_lines(eval_results: list[dict], it: int) -> list[tuple[str, str]]:
    """The human probe and the frozen set of iteration `it` (model M_it: eval iteration it - 1),
    each number with its 95% interval, and the verdict against the previous model."""
    import json

    lines = []
    by: dict[str, dict] = {}
    for r in eval_results:
        if r["iteration"] == it - 1 and (r["eval"].startswith("probe:") or r["eval"] == "frozen"):
            by.setdefault(r["eval"], {})[r["metric"]] = r
    for name, m in sorted(by.items()):
        if name.startswith("probe:") and "agreement" in m:
            text = (
                f"agreement {_ci(m['agreement'])}, without ties {_ci(m['agreement_without_ties'])}, "
                f"ties {_ci(m['tie_rate'])}"
            )
            if "agreement_change" in m:
                text += f"; vs M{it - 1}: {_ci(m['agreement_change'])}"
            lines.append((f"judge vs humans ({name[6:]})", text))
            change = m.get("agreement_change")
            lines.append(
                (
                    "judge verdict",
                    json.loads(change["details"] or "{}").get("verdict", "?") if change else "first probed model",
                )
            )
        elif name == "frozen":
            parts = [
                f"{k.replace('_', ' ')} {_ci(m[k])}"
                for k in ("mean_shift", "top_score_share", "tie_rate", "score_length_r")
                if k in m
            ]
            lines.append(("judge drift (frozen)", ", ".join(parts)))
    return lines
