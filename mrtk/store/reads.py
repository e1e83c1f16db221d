"""Read-only analysis reads over a run database: what `mrtk report`, `mrtk compare` and `mrtk runs`
show. They open the file read-only (a running writer keeps writing) and hold the SQL, so the
commands hold only the arithmetic and the layout.

A judge set is one template (by hash), score mode, source (loop, rejudge, eval, drift) and
judging model: `judged_by` is "own" when each iteration's model judged its own responses.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mrtk.rows import TRAINED_PAIR_KINDS
from mrtk.store.db import DB_NAME, dict_rows, open_readonly

_JUDGED_BY = "CASE WHEN model_version = 'M' || iteration THEN 'own' ELSE model_version END"
_SETS = f"""
SELECT 'pointwise' AS kind, template, template_hash, score_mode, source, {_JUDGED_BY} AS judged_by,
       count(*) AS n_rows, list(DISTINCT iteration ORDER BY iteration) AS iterations
FROM judgements GROUP BY ALL
UNION ALL
SELECT 'pairwise', template, template_hash, score_mode, 'rejudge', {_JUDGED_BY}, count(*), list(DISTINCT iteration ORDER BY iteration)
FROM pairwise_judgements GROUP BY ALL
ORDER BY template, score_mode, source
"""
_IN_SET = f"template_hash = $template_hash AND score_mode = $score_mode AND ({_JUDGED_BY}) = $judged_by AND list_contains($its, iteration)"


@contextmanager
def reading(run_dir: Path) -> Iterator:
    con = open_readonly(Path(run_dir) / DB_NAME)
    try:
        yield con
    finally:
        con.close()


def _q(con, sql: str, params=None) -> list[dict]:
    return dict_rows(con.execute(sql, params or []))


def judge_sets(con) -> list[dict]:
    """Every judge set of the run with its row count and the iterations it judged."""
    return _q(con, _SETS)


def stored_config(con) -> dict:
    return json.loads(con.execute("SELECT config FROM runs").fetchall()[0][0])


def responses_in(con, its: list[int]) -> list[dict]:
    return _q(
        con,
        "SELECT response_id, prompt_id, iteration, n_chars, is_duplicate FROM responses WHERE list_contains($its, iteration)",
        {"its": its},
    )


_SET_ROWS = {  # a judge set's rows, from the table its kind writes (pairwise sets are all source 'rejudge', see _SETS)
    "pointwise": f"SELECT iteration, prompt_id, response_id, score, parse_status FROM judgements WHERE {_IN_SET} AND source = $source",
    "pairwise": f"SELECT iteration, prompt_id, response_a, response_b, verdict, winner, parse_status FROM pairwise_judgements "
    f"WHERE {_IN_SET} AND $source = 'rejudge'",
}


def judge_set_rows(con, s: dict, its: list[int]) -> list[dict]:
    """One judge set's rows in these iterations: scores (pointwise) or verdicts (pairwise)."""
    params = {k: s[k] for k in ("template_hash", "score_mode", "judged_by", "source")} | {"its": its}
    return _q(con, _SET_ROWS[s["kind"]], params)


def run_summary(db: Path) -> dict:
    """`mrtk runs`: status, iterations done of planned, loop judgements and unparsed, kept pairs, last DPO loss."""
    con = open_readonly(db, wait_s=5)
    try:
        status, done_its, planned = con.execute(
            "SELECT status, (SELECT count(*) FROM lineage), iterations FROM runs"
        ).fetchall()[0]
        n, unparsed = con.execute(
            "SELECT count(*), count(*) - count(score) FROM judgements WHERE source = 'loop'"
        ).fetchall()[0]
        kept = con.execute(
            "SELECT count(*) FROM pairs WHERE status = 'kept' AND list_contains(?, kind)", [list(TRAINED_PAIR_KINDS)]
        ).fetchall()[0][0]
        loss = con.execute("SELECT arg_max(loss, iteration * 100000 + step) FROM train_metrics").fetchall()[0][0]
    finally:
        con.close()
    return {
        "run": db.parent.name,
        "status": status,
        "iterations": f"{done_its}/{planned}",
        "judgements": n,
        "unparsed": unparsed,
        "pairs": kept,
        "loss": "-" if loss is None else f"{loss:.3f}",
    }


def _has_table(con, name: str) -> bool:
    return bool(_q(con, "SELECT 1 FROM information_schema.tables WHERE table_name = ?", [name]))


def report_data(run_dir: Path) -> dict:
    """All numbers `mrtk report` shows, by SQL over the run database."""
    with reading(run_dir) as con:
        d = {
            "run": _q(con, "SELECT * FROM runs")[0],
            "lineage": _q(
                con,
                "SELECT iteration, base_model, output_model, pairs_in, pairs_trained, pairs_dropped_too_long FROM lineage ORDER BY 1",
            ),
            "stages": _q(
                con,
                "SELECT iteration, stage, status, round(seconds, 1) AS seconds FROM stages ORDER BY iteration, started_at",
            ),
            "scores": _q(con, "SELECT iteration, score FROM judgements WHERE score IS NOT NULL AND source = 'loop'"),
            "unparsed": _q(
                con,
                "SELECT iteration, sum(judgements) AS n, sum(unparsed) AS unparsed FROM iteration_judge_scores "
                "WHERE source = 'loop' GROUP BY 1 ORDER BY 1",
            ),
            "lengths": _q(con, "SELECT iteration, n_chars FROM responses WHERE NOT is_duplicate"),
            "pairs": _q(con, "SELECT iteration, kind, status, reason, n FROM iteration_pairs ORDER BY ALL"),
            "pair_lengths": _q(
                con,
                """SELECT iteration, kind, avg(chosen_chars) AS chosen, avg(rejected_chars) AS rejected
                                       FROM pairs WHERE status = 'kept' GROUP BY ALL ORDER BY ALL""",
            ),
            "train": _q(con, "SELECT iteration, step, loss, reward_margin FROM train_metrics ORDER BY iteration, step"),
            "meta_bias": _q(
                con,
                """SELECT iteration, first_position_share, higher_score_share, verdicts AS n
                                    FROM iteration_meta_bias WHERE verdicts > 0 ORDER BY 1""",
            ),
            "elo": _q(
                con, "SELECT iteration, response_id, max(elo) - min(elo) AS spread FROM elo GROUP BY ALL ORDER BY ALL"
            ),
            "eval": _q(con, "SELECT * FROM eval_results ORDER BY 1") if _has_table(con, "eval_results") else [],
        }
    return d
