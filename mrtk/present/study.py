"""`mrtk study STUDY.yaml`: the same loop run once per variant (a base experiment with a few
`--set` overrides each), then the variants side by side per iteration.

A study file names a base experiment, overrides for every variant, and the variants:

    name: study_cpu
    base: default
    set: {iterations: 3, probe.file: probe_human.jsonl}
    variants:
      paper: {}
      soft_verdicts: {meta_judge.verdict: soft}

Each variant is an ordinary run under OUT/<variant>/ (inspect it with `mrtk query --run`); a
study started again skips the variants that finished and resumes the one that stopped. The
table (also OUT/study.md and OUT/study.json) gives per variant and iteration: the meta-judge's
first-position share and its even battles (ties), the probe's agreement with humans (95%
interval) for the model that iteration judged with, the frozen set's mean score shift from
iteration 1, pairs kept, DPO's last reward margin and label smoothing, and the run's minutes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import yaml

from mrtk.errors import MrtkError
from mrtk.store.db import DB_NAME
from mrtk.ties import EVEN_VERDICT


def load_study(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise MrtkError(
            f"study {path}: cannot read it ({type(e).__name__}); give a YAML file with base, set and variants"
        ) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("variants"), dict) or not raw["variants"]:
        raise MrtkError(
            f"study {path}: needs a `variants:` mapping (name -> overrides); see experiments/study_cpu.yaml"
        )
    for name, sets in raw["variants"].items():
        if not isinstance(sets, dict) or not str(name).replace("_", "").replace("-", "").isalnum():
            raise MrtkError(f"study {path}: variant {name!r} must be a plain name mapped to overrides (key: value)")
    return {
        "name": raw.get("name") or path.stem,
        "base": raw.get("base") or "default",
        "set": dict(raw.get("set") or {}),
        "variants": {str(k): dict(v) for k, v in raw["variants"].items()},
    }


def overrides(common: dict, own: dict, name: str) -> list[str]:
    """`--set` strings: the study's, then the variant's, then its run name."""
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in {**common, **own}.items()] + [
        f"name={name}"
    ]


def variant_configs(study: dict, study_dir: Path) -> dict:
    """variant -> (config path, validated config): every variant is checked before any runs."""
    from mrtk.config import load_config, resolve_config_path

    beside = study_dir / study["base"]
    path = resolve_config_path(str(beside) if beside.is_file() else study["base"])
    return {
        v: (path, load_config(path, overrides(study["set"], sets, f"{study['name']}-{v}")))
        for v, sets in study["variants"].items()
    }


def run_study(study_path: Path, out_dir: Path, ui, **loop_kw) -> dict:
    """Run (or finish) every variant, then write study.json and study.md. `loop_kw`: the loop's seams
    (open_policy, train), passed to each variant's loop."""
    from mrtk.inputs import check_inputs
    from mrtk.loop import run_locked
    from mrtk.runs import latest_run, new_run, open_run
    from mrtk.store import RunStore

    study = load_study(study_path)
    configs = variant_configs(study, study_path.parent)
    runs = {}
    first = None  # the first finished variant: M1's probe judgements are every variant's (see shares_m1)
    for variant, (path, cfg) in configs.items():
        parent = out_dir / variant
        try:
            found = latest_run(parent)
        except MrtkError:  # no run of this variant yet
            found = None
        if found and RunStore(found).run_row()["status"] == "success":
            ui.info(f"study {study['name']}: {variant} finished before ({found})")
            runs[variant] = found
            first = first or (found, cfg)
            continue
        if found:
            store, stored, config_dir = open_run(found)
            inputs = check_inputs(stored, config_dir)
        else:
            inputs = check_inputs(cfg, path.parent)
            store = new_run(inputs.cfg, str(path.resolve()), parent)
            if first and shares_m1(first[1], cfg) and (copied := store.adopt_probe_items(first[0] / DB_NAME, 0)):
                ui.info(
                    f"study {study['name']}: {variant} takes M1's {copied} probe judgements from {first[0].name} (same model, judge and seed)"
                )
        run_locked(
            store, inputs, ui, say=f"study {study['name']}: [bold]{variant}[/bold] -> {store.run_dir}", **loop_kw
        )
        runs[variant] = store.run_dir
        first = first or (store.run_dir, cfg)
    table = study_rows(runs)
    truth_table, compared = truth_rows(runs), truth_comparisons(runs)
    (out_dir / "study.json").write_text(
        json.dumps(
            {
                "study": study,
                "runs": {k: str(v) for k, v in runs.items()},
                "rows": table,
                "truth": truth_table,
                "compared": compared,
            },
            indent=1,
            default=str,
        ),
        encoding="utf-8",
    )
    (out_dir / "study.md").write_text(markdown(table) + truth_markdown(truth_table, compared), encoding="utf-8")
    chart(table, out_dir / "study.png")
    return {"runs": runs, "rows": table, "truth": truth_table, "compared": compared}


def chart(rows: list[dict], path: Path) -> None:
    """study.png: one line per variant across iterations, 95% interval bars: the judge's agreement
    with humans (chance 50), the meta-judge's first-position share (chance 50), and the judge-pair
    battles that came out even."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mrtk.present.report import interval_lines

    def series(get) -> dict[str, list[tuple]]:
        out: dict[str, list[tuple]] = {}
        for r in rows:
            v = get(r)
            if v is not None and v[0] is not None:
                out.setdefault(r["variant"], []).append((r["iteration"], *v))
        return out

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6), constrained_layout=True)
    probe = series(
        lambda r: (
            None
            if r["probe_agreement"] is None
            else tuple(100 * x if x is not None else None for x in r["probe_agreement"][:3])
        )
    )
    interval_lines(axes[0], probe, percent=True, reference=(50.0, "chance"))
    axes[0].set(title="judge agreement with humans (M_t on the probe)", xlabel="iteration", ylabel="percent")
    first = series(
        lambda r: None if r["first_position_share"] is None else (100 * r["first_position_share"], None, None)
    )
    interval_lines(axes[1], first, percent=True, reference=(50.0, "chance"))
    axes[1].set(title="meta-judge: first-position verdicts", xlabel="iteration", ylabel="percent")
    ties = series(lambda r: None if r["ties"] is None else (100 * r["ties"][0], None, None))
    interval_lines(axes[2], ties, percent=True)
    axes[2].set(title="meta-judge: judgement pairs even (BT input)", xlabel="iteration", ylabel="percent")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def shares_m1(a, b) -> bool:
    """Two variants judge the human probe with the same M1 when the seed model, the judge, the
    probe, the seed and the generation settings agree (the switches change nothing before M2)."""
    same = ("model", "seed", "sft", "judge", "probe", "runtime", "backend")
    return all(getattr(a, k) == getattr(b, k) for k in same) and a.prompts.template_dirs == b.prompts.template_dirs


def study_rows(runs: dict[str, Path]) -> list[dict]:
    """One row per variant and iteration, read from each run's DuckDB."""
    from mrtk.store import RunStore

    out = []
    for variant, run_dir in runs.items():
        store = RunStore(run_dir)
        row = store.run_row()
        config = json.loads(row["config"]) if isinstance(row["config"], str) else row["config"]
        soft = config["meta_judge"].get("verdict") == "soft"
        minutes = (
            (row["updated_at"] - row["created_at"]).total_seconds() / 60
            if row["updated_at"] and row["created_at"]
            else None
        )
        health = defaultdict(dict)
        for r in store.health_results():
            health[(r["eval"].split(":")[0], r["iteration"])][r["metric"]] = r
        for it in store.trained_iterations():
            numbers = store.iteration_numbers(it)
            kept = {(p["kind"]): p["n"] for p in numbers["pairs"] if p["status"] == "kept"}
            probe = health[("probe", it - 1)].get("agreement")  # eval rows carry t-1 for M_t's judge
            drift = health[("frozen", it - 1)].get("mean_shift")
            stats = store.lineage_stats(it)
            out.append(
                {
                    "variant": variant,
                    "iteration": it,
                    "first_position_share": numbers["meta"]["first_pos"],
                    "ties": even_battles(store.meta_judgements(it), soft),
                    "probe_agreement": None
                    if probe is None
                    else (probe["value"], probe["ci_low"], probe["ci_high"], probe["n"]),
                    "drift_mean_shift": None
                    if drift is None
                    else (drift["value"], drift["ci_low"], drift["ci_high"], drift["n"]),
                    "actor_pairs": kept.get("actor", 0),
                    "judge_pairs": kept.get("judge", 0),
                    "dropped": {
                        f"{p['kind']}:{p['reason']}": p["n"] for p in numbers["pairs"] if p["status"] != "kept"
                    },
                    "dpo_steps": numbers["train"]["steps"],
                    "reward_margin": numbers["train"]["last_margin"],
                    # what DPO trained with (robust's cap: 0.49), not what the consistency stage asked for
                    "label_smoothing": stats.get("label_smoothing_applied", stats.get("label_smoothing")),
                    "label_smoothing_asked": stats.get("label_smoothing"),
                    "run_minutes": minutes,
                }
            )
    return out


def even_battles(meta_rows: list[dict], soft: bool) -> tuple[float, int] | None:
    """(share, judgement pairs): among pairs of judgements the meta-judge saw in both orders, those
    whose input to Bradley-Terry is even: hard, the two orders name different judgements (one win
    each); soft, the order-averaged p is within ties.EVEN_VERDICT of 0.5."""
    from mrtk.stages.meta_judge import soft_preferences

    if soft:
        both = [p for p, orders in soft_preferences(meta_rows).values() if orders == 2]
        return (sum(abs(p - 0.5) <= EVEN_VERDICT for p in both) / len(both), len(both)) if both else None
    winner = {(m["judgement_a"], m["judgement_b"]): m["winner"] for m in meta_rows if m["winner"]}
    both = [(a, b) for a, b in winner if a < b and (b, a) in winner]
    return (sum(winner[(a, b)] != winner[(b, a)] for a, b in both) / len(both), len(both)) if both else None


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _interval(v, scale: float = 100.0, fmt: str = ".1f") -> str:
    """(value, ci_low, ci_high, n) -> "v [lo, hi] (n=N)"; an interval not computed is left out."""
    if v is None or v[0] is None:
        return "-"
    ci = "" if v[1] is None or v[2] is None else f" [{scale * v[1]:{fmt}}, {scale * v[2]:{fmt}}]"
    return f"{scale * v[0]:{fmt}}{ci} (n={v[3]})"


COLUMNS = [
    "variant",
    "it",
    "first pos.",
    "ties (pairs)",
    "probe agreement % [95% CI]",
    "frozen shift [95% CI]",
    "pairs a/j",
    "DPO steps",
    "reward margin",
    "label smooth.",
    "minutes",
]


def cells(r: dict) -> list[str]:
    return [
        r["variant"],
        str(r["iteration"]),
        _pct(r["first_position_share"]),
        "-" if r["ties"] is None else f"{_pct(r['ties'][0])} ({r['ties'][1]})",
        _interval(r["probe_agreement"]),
        _interval(r["drift_mean_shift"], 1.0, "+.2f"),
        f"{r['actor_pairs']}/{r['judge_pairs']}",
        str(r["dpo_steps"]),
        "-" if r["reward_margin"] is None else f"{r['reward_margin']:+.3f}",
        "-"
        if r["label_smoothing"] is None
        else f"{r['label_smoothing']:.3f}"
        + (
            f" (asked {r['label_smoothing_asked']:.3f})"
            if r["label_smoothing_asked"] not in (None, r["label_smoothing"])
            else ""
        ),
        "-" if r["run_minutes"] is None else f"{r['run_minutes']:.1f}",
    ]


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# -- against the truth (prompts with IFEval checks; evals/truth.py) ---------------------------------
TRUTH_COLUMNS = [
    ("actor_strict", "actor pass % (own prompts)"),
    ("heldout_strict", "held-out pass %"),
    ("heldout_change_M1", "change from M1, points"),
    ("judge_accuracy", "judge acc. %"),
    ("meta_accuracy", "meta-judge acc. %"),
    ("right_pairs", "right pairs %"),
    ("wrong_pairs", "wrong pairs %"),
]


def truth_rows(runs: dict[str, Path]) -> list[dict]:
    """One row per variant and model M_t (the final, trained model included): its truth numbers."""
    from mrtk.store import RunStore

    out = []
    for variant, run_dir in runs.items():
        by_it: dict[int, dict] = defaultdict(dict)
        for r in RunStore(run_dir).truth_results():
            by_it[r["iteration"]][r["metric"]] = (r["value"], r["ci_low"], r["ci_high"], r["n"])
        out += [{"variant": variant, "model": f"M{it}", **by_it[it]} for it in sorted(by_it)]
    return out


def truth_comparisons(runs: dict[str, Path]) -> list[dict]:
    """Each pair of variants, model by model, on the held-out slice: the paired difference of the
    per-prompt strict pass share (the same prompts and seeds in every variant of a study), never two
    intervals side by side. A change whose interval holds zero is "no detectable change"."""
    from mrtk.evals import truth
    from mrtk.store import RunStore

    held = {v: RunStore(d) for v, d in runs.items()}
    names = sorted(held)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for it in sorted(set(held[a].heldout_iterations()) & set(held[b].heldout_iterations())):
                d = truth.change(held[a].verdicts(it, "heldout"), held[b].verdicts(it, "heldout"))
                out.append({"a": a, "b": b, "model": f"M{it}", "diff": d})
    return out


def _verdict(d: tuple) -> str:
    if d[0] is None:
        return "-"
    if d[1] is None:
        return f"{100 * d[0]:+.1f} points (n={d[3]}, too few prompts for an interval)"
    word = "no detectable change" if d[1] <= 0 <= d[2] else ("higher" if d[1] > 0 else "lower")
    return f"{100 * d[0]:+.1f} [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}] points (n={d[3]}): {word}"


def truth_markdown(rows: list[dict], compared: list[dict]) -> str:
    if not rows:
        return ""
    head = ["variant", "model"] + [label for _, label in TRUTH_COLUMNS]
    lines = [
        "",
        "Against the truth (IFEval checks; 95% intervals; change: paired over held-out prompts):",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cols = [
            _interval(r.get(m), 100.0, "+.1f" if m == "heldout_change_M1" else ".1f")
            + (
                " (no detectable change)"
                if m == "heldout_change_M1" and r.get(m) and r[m][1] is not None and r[m][1] <= 0 <= r[m][2]
                else ""
            )
            for m, _ in TRUTH_COLUMNS
        ]
        lines.append("| " + " | ".join([r["variant"], r["model"], *cols]) + " |")
    if compared:
        lines += ["", "Variants compared on the held-out slice (a minus b, paired bootstrap over prompts):", ""]
        lines += [f"- {c['model']}: {c['a']} - {c['b']}: {_verdict(c['diff'])}" for c in compared]
    return "\n".join(lines) + "\n"
