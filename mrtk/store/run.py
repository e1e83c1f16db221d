"""One run's data as verbs (simonw/llm's `LogStore`): what the loop, `mrtk judge` and `mrtk eval`
read and write, so the SQL lives here and the callers say what they want.

Loop rows are the judgements with `source = 'loop'` under the run's judge template hash;
re-judgements (`mrtk judge`, the frozen drift set) carry their key (template hash, score mode,
model version) inside their ids: `.../<key>/j<k>`.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from mrtk.errors import MrtkError
from mrtk.rows import TRAINED_PAIR_KINDS
from mrtk.store.db import Database

# Tables that hold one iteration's derived rows, recomputed whole (never appended to).
_PER_ITERATION = ("elo", "pairs")


def _keyed(key: str) -> str:
    """The LIKE pattern of the judgement ids written under a re-judgement key."""
    return f"%/{key}/j%"


class RunStore(Database):
    # -- the run row ------------------------------------------------------------------------
    def config(self) -> dict | None:
        """The stored runs row's config and config path, or None for a run never started."""
        rows = self.fetch("SELECT config, config_path FROM runs")
        return rows[0] if rows else None

    def set_status(self, status: str, error: str | None = None) -> None:
        with self.tx() as con:
            con.execute(
                "UPDATE runs SET status = ?, updated_at = ?, error = ?", [status, datetime.now(), error]
            ).fetchall()

    def record_generation_dtype(self, dtype: str | None, why: str) -> None:
        with self.tx() as con:
            con.execute("UPDATE runs SET inference_dtype = ?, inference_dtype_reason = ?", [dtype, why]).fetchall()

    def record_templates(self, templates) -> None:
        """The templates whose hashes rows carry (name, role, score range, body): the metric views
        read a judge's top score from its range. Idempotent by hash."""
        self.write(
            "templates",
            [
                {
                    "template_hash": t.hash,
                    "name": t.name,
                    "role": t.role,
                    "parser": t.parser,
                    "score_low": t.score_range[0],
                    "score_high": t.score_range[1],
                    "body": t.body,
                }
                for t in templates
            ],
        )

    def record_serving(self, serving: dict) -> None:
        """What a served backend reported at attach (versions, whether seeds are honoured)."""
        with self.tx() as con:
            con.execute("UPDATE runs SET serving = ?", [json.dumps(serving)]).fetchall()

    # -- stages -----------------------------------------------------------------------------
    def stage_done(self, it: int, name: str) -> bool:
        return bool(
            self.fetch("SELECT 1 FROM stages WHERE iteration = ? AND stage = ? AND status = 'done'", [it, name])
        )

    @contextmanager
    def stage(self, it: int, name: str, on_end=lambda: None):
        """Bookkeeping around a stage body: a `stages` row, running then done with its seconds; a
        body that raises leaves it `error` (Ctrl-C: `interrupted`) with the reason, then the
        exception goes on (a SIGKILL leaves `running`). A resumed stage starts a fresh row. The
        body runs even for a finished stage (every body computes only what is missing), and then
        nothing is recorded. `on_end` runs before the row is marked done (memory release)."""
        if self.stage_done(it, name):
            yield
            return
        t0 = time.time()
        self.begin_stage(it, name)
        try:
            yield
            on_end()
        except BaseException as e:
            self.end_stage(it, name, time.time() - t0, e)
            raise
        self.end_stage(it, name, time.time() - t0)

    def begin_stage(self, it: int, name: str) -> None:
        """A fresh `running` row for the stage, started now (an earlier row of it is replaced)."""
        with self.tx() as con:
            con.execute("DELETE FROM stages WHERE iteration = ? AND stage = ?", [it, name]).fetchall()
            self.insert(
                con, "stages", [{"iteration": it, "stage": name, "status": "running", "started_at": datetime.now()}]
            )

    def end_stage(self, it: int, name: str, seconds: float, error: BaseException | None = None) -> None:
        """The stage's row ends now, after `seconds`: done, or stopped by `error` (Ctrl-C: `interrupted`,
        anything else `error`, with the reason in one line)."""
        status = "done" if error is None else "interrupted" if isinstance(error, KeyboardInterrupt) else "error"
        reason = None if error is None else f"{type(error).__name__}: {' '.join(str(error).split())}"[:500]
        try:
            with self.tx() as con:
                con.execute(
                    "UPDATE stages SET status = ?, finished_at = ?, seconds = ?, error = ? WHERE iteration = ? AND stage = ?",
                    [status, datetime.now(), seconds, reason, it, name],
                ).fetchall()
        except (
            MrtkError
        ):  # the failure was the database itself (disk full): the run row says so, the stage stays `running`
            if status == "done":
                raise

    # -- what one iteration holds -------------------------------------------------------------
    def prompts(self, it: int) -> list[dict]:
        """Iteration `it`'s prompts: prompt_id, text and checks (IFEval instructions as a dict, or None)."""
        rows = self.fetch("SELECT prompt_id, text, checks FROM prompts WHERE iteration = ? ORDER BY prompt_id", [it])
        return [dict(r, checks=json.loads(r["checks"]) if isinstance(r["checks"], str) else r["checks"]) for r in rows]

    def all_prompts(self) -> dict[tuple[int, str], str]:
        """(iteration, prompt_id) -> text, every iteration."""
        return {
            (r["iteration"], r["prompt_id"]): r["text"]
            for r in self.fetch("SELECT iteration, prompt_id, text FROM prompts")
        }

    def responses(self, it: int, prompts: set[str] | None = None) -> list[dict]:
        """Iteration `it`'s responses (of the `prompts` ids only, when given), in id order."""
        where, params = _of_prompts(prompts)
        return self.fetch(f"SELECT * FROM responses WHERE iteration = ?{where} ORDER BY response_id", [it, *params])

    def anchor_responses(self, it: int) -> list[dict]:
        return self.fetch("SELECT * FROM anchor_responses WHERE iteration = ? ORDER BY response_id", [it])

    def future_responses(self, it: int) -> list[dict]:
        """Iteration t's temporary next model's samples (pairs.chosen_from: future)."""
        return self.fetch("SELECT * FROM future_responses WHERE iteration = ? ORDER BY response_id", [it])

    def heldout_responses(self, it: int) -> list[dict]:
        """M_it's answers to the held-out verifiable slice (prompts.heldout)."""
        return self.fetch("SELECT * FROM heldout_responses WHERE iteration = ? ORDER BY response_id", [it])

    def heldout_iterations(self) -> list[int]:
        """The model iterations that answered the held-out slice."""
        return [r["iteration"] for r in self.fetch("SELECT DISTINCT iteration FROM heldout_responses ORDER BY 1")]

    def verdicts(self, it: int, source: str) -> list[dict]:
        """IFEval verdicts of iteration `it`'s loop responses (source 'loop') or of M_it's held-out answers ('heldout')."""
        return self.fetch(
            "SELECT * FROM verdicts WHERE iteration = ? AND source = ? ORDER BY response_id", [it, source]
        )

    def responses_by_id(self, ids: list[str]) -> dict[str, dict]:
        return {
            r["response_id"]: r
            for r in self.fetch("SELECT * FROM responses WHERE response_id IN (SELECT unnest(?))", [ids])
        }

    def response_iterations(self) -> list[int]:
        return [r["iteration"] for r in self.fetch("SELECT DISTINCT iteration FROM responses ORDER BY 1")]

    def answered_prompts(self, it: int) -> set[str]:
        return {
            r["prompt_id"] for r in self.fetch("SELECT DISTINCT prompt_id FROM responses WHERE iteration = ?", [it])
        }

    def loop_judgements(self, it: int, template_hash: str, prompts: set[str] | None = None) -> list[dict]:
        """The loop's judgements of iteration `it` under one template (of the `prompts` ids only, when given)."""
        where, params = _of_prompts(prompts)
        return self.fetch(
            "SELECT * FROM judgements WHERE iteration = ? AND template_hash = ? AND source = 'loop'"
            f"{where} ORDER BY judgement_id",
            [it, template_hash, *params],
        )

    def keyed_judgements(self, it: int, key: str) -> list[dict]:
        """Iteration `it`'s judgements under a re-judgement key (stages.judge.Judging.key)."""
        return self.fetch(
            "SELECT * FROM judgements WHERE iteration = ? AND judgement_id LIKE ? ORDER BY judgement_id",
            [it, _keyed(key)],
        )

    def judged_ids(self, table: str, it: int, key: str) -> set[str]:
        """The row ids of `table` (judgements or pairwise_judgements) written in iteration `it` under
        a judging key (stages.judge.Judging.key: the template hash of the loop's rows, or a re-judgement key)."""
        if table not in ("judgements", "pairwise_judgements"):
            raise ValueError(f"{table} is not a judgement table")
        return {
            r["judgement_id"]
            for r in self.fetch(
                f"SELECT judgement_id FROM {table} WHERE iteration = ? AND judgement_id LIKE ?", [it, f"%{key}/j%"]
            )
        }

    def mean_scores(
        self, ids: list[str], *, it: int | None = None, template_hash: str | None = None, key: str | None = None
    ) -> dict[str, float]:
        """response_id -> mean parsed score of these responses: the loop's judgements (under
        `template_hash` when given), or those of a re-judgement `key`; in iteration `it` when given."""
        where, params = ["score IS NOT NULL", "response_id IN (SELECT unnest(?))"], [ids]
        for clause, value in (
            ("iteration = ?", it),
            ("template_hash = ?", template_hash),
            ("judgement_id LIKE ?", key and _keyed(key)),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        if key is None:
            where.append("source = 'loop'")
        got = self.fetch(
            f"SELECT response_id, avg(score) AS s FROM judgements WHERE {' AND '.join(where)} GROUP BY 1", params
        )
        return {r["response_id"]: r["s"] for r in got}

    def meta_judged(self, it: int, template_hash: str) -> set[tuple[str, str]]:
        return {
            (m["judgement_a"], m["judgement_b"])
            for m in self.fetch(
                "SELECT judgement_a, judgement_b FROM meta_judgements WHERE iteration = ? AND template_hash = ?",
                [it, template_hash],
            )
        }

    def meta_judgements(self, it: int, template_hash: str | None = None, prompts: set[str] | None = None) -> list[dict]:
        """Iteration `it`'s meta-judgements (of one template, of the `prompts` ids only, when given)."""
        where, params = _of_prompts(prompts)
        if template_hash is not None:
            where, params = " AND template_hash = ?" + where, [template_hash, *params]
        return self.fetch(f"SELECT * FROM meta_judgements WHERE iteration = ?{where}", [it, *params])

    def run_row(self) -> dict:
        """The run's own row: status, stored config, when it was created and last updated."""
        return self.fetch("SELECT * FROM runs")[0]

    def lineage_stats(self, it: int) -> dict:
        rows = self.fetch("SELECT stats FROM lineage WHERE iteration = ?", [it])
        stats = rows[0]["stats"] if rows else None
        return (json.loads(stats) if isinstance(stats, str) else stats) or {}

    def kept_pairs(self, it: int, kind: str | None = None) -> list[dict]:
        """Iteration t's kept pairs of one kind, or (no kind) those its DPO trains on (rows.TRAINED_PAIR_KINDS)."""
        kinds = [kind] if kind else list(TRAINED_PAIR_KINDS)
        return self.fetch(
            "SELECT * FROM pairs WHERE iteration = ? AND status = 'kept' AND list_contains(?, kind) ORDER BY pair_id",
            [it, kinds],
        )

    def pair_iterations(self, kind: str) -> list[int]:
        """Iterations with kept pairs of this kind."""
        return [
            r["iteration"]
            for r in self.fetch(
                "SELECT DISTINCT iteration FROM pairs WHERE kind = ? AND status = 'kept' ORDER BY 1", [kind]
            )
        ]

    def drop_pairs(self, reasons: dict[str, str]) -> None:
        """Mark kept pairs dropped (pair_id -> reason), e.g. too long to train on."""
        with self.tx() as con:
            for pair_id, reason in reasons.items():
                con.execute(
                    "UPDATE pairs SET status = 'dropped', reason = ? WHERE pair_id = ?", [reason, pair_id]
                ).fetchall()

    def replace_iteration(self, table: str, it: int, rows: list[dict], kinds: tuple[str, ...] | None = None) -> None:
        """An iteration's derived rows (elo, pairs), replaced whole in one transaction; `kinds`: only the
        pairs of these kinds are replaced (the anchored pairs and the final ones are written apart)."""
        if table not in _PER_ITERATION:
            raise ValueError(f"{table} is not a per-iteration table ({', '.join(_PER_ITERATION)})")
        if kinds is not None and table != "pairs":
            raise ValueError(f"only pairs are replaced by kind, not {table}")
        if kinds is not None and any(r["kind"] not in kinds for r in rows):
            raise ValueError(f"rows of kinds other than {kinds} given")
        with self.tx() as con:
            if kinds is None:
                con.execute(f"DELETE FROM {table} WHERE iteration = ?", [it]).fetchall()
            else:
                con.execute(
                    "DELETE FROM pairs WHERE iteration = ? AND list_contains(?, kind)", [it, list(kinds)]
                ).fetchall()
            self.insert(con, table, rows)

    def count(self, table: str) -> int:
        return self.fetch(f"SELECT count(*) AS n FROM {table}")[0]["n"]

    def iteration_numbers(self, it: int) -> dict:
        """One iteration's numbers for the summary table and the trackers: judge scores (mean,
        spread, top-score share, unparsed share), responses, meta-judge biases (first position,
        higher score), pairs by kind/status/reason, DPO's first and last loss."""
        q = self.fetch
        j = (
            q(
                """SELECT judgements AS n, parsed, mean_score, score_sd AS sd, top_score_share AS top, unparsed_share AS unparsed
                  FROM iteration_judge_scores WHERE iteration = ? AND source = 'loop'""",
                [it],
            )
            or [{"n": 0, "parsed": 0, "mean_score": None, "sd": None, "top": None, "unparsed": None}]
        )[0]
        r = q(
            "SELECT count(*) AS n, avg(n_chars) AS mean_chars, sum(is_duplicate::INT) AS dups FROM responses WHERE iteration = ?",
            [it],
        )[0]
        m = (
            q(
                """SELECT battles AS n, verdicts AS parsed, first_position_share AS first_pos, higher_score_share
                  FROM iteration_meta_bias WHERE iteration = ?""",
                [it],
            )
            or [{"n": 0, "parsed": 0, "first_pos": None, "higher_score_share": None}]
        )[0]
        reasons = q("SELECT kind, status, reason, n FROM iteration_pairs WHERE iteration = ? ORDER BY ALL", [it])
        t = q(
            """SELECT arg_min(loss, step) AS first_loss, arg_max(loss, step) AS last_loss,
                        arg_max(reward_margin, step) AS last_margin, count(*) AS steps
                 FROM train_metrics WHERE iteration = ?""",
            [it],
        )[0]
        t["smoothing"] = (
            q(
                """SELECT TRY_CAST(stats->>'label_smoothing_applied' AS DOUBLE) AS e,
                          coalesce(TRY_CAST(stats->>'pairs_reversed' AS BOOLEAN), false) AS reversed
                     FROM lineage WHERE iteration = ?""",
                [it],
            )
            or [None]
        )[0]
        future = {
            (x["judge"], x["metric"]): x
            for x in q(
                "SELECT judge, metric, value, n, details FROM eval_results WHERE eval = 'future' AND iteration = ?",
                [it],
            )
        }
        return {"judgements": j, "responses": r, "meta": m, "pairs": reasons, "train": t, "future": future}

    # -- models -------------------------------------------------------------------------------
    def record_training(
        self,
        it: int,
        base: str,
        out: Path,
        metrics: list[dict],
        stats: dict,
        n_in: int,
        n_trained: int,
        n_too_long: int,
    ) -> None:
        """What iteration `it` trained (lineage) and its per-step metrics, replacing a partial record."""
        with self.tx() as con:
            con.execute("DELETE FROM train_metrics WHERE iteration = ?", [it]).fetchall()
            self.insert(con, "train_metrics", metrics)
            self.insert(
                con,
                "lineage",
                [
                    {
                        "iteration": it,
                        "base_model": self.in_run(base),
                        "output_model": self.in_run(out),
                        "pairs_in": n_in,
                        "pairs_trained": n_trained,
                        "pairs_dropped_too_long": n_too_long,
                        "stats": stats,
                        "finished_at": datetime.now(),
                    }
                ],
            )

    def output_model(self, it: int) -> Path | None:
        """The model directory iteration `it` trained (stored relative to the run: runs can move)."""
        rows = self.fetch("SELECT output_model FROM lineage WHERE iteration = ?", [it])
        return self.run_dir / rows[0]["output_model"] if rows else None

    def trained_iterations(self) -> list[int]:
        return [r["iteration"] for r in self.fetch("SELECT iteration FROM lineage WHERE iteration >= 1 ORDER BY 1")]

    def in_run(self, path) -> str:
        """Paths inside the run directory are stored relative to it, so a run can be moved."""
        try:
            return str(Path(path).resolve().relative_to(self.run_dir.resolve()))
        except ValueError:
            return str(path)

    # -- evals --------------------------------------------------------------------------------
    def eval_outputs(self, name: str, it: int) -> dict[str, dict]:
        """example_id -> the policy's stored answer for one eval and model iteration."""
        return {
            r["example_id"]: r
            for r in self.fetch("SELECT * FROM eval_outputs WHERE eval = ? AND iteration = ?", [name, it])
        }

    def eval_items(self, name: str, it: int, judge: str | None = None) -> list[dict]:
        """Judged items of one eval and model iteration (one judge's, when given), by item id."""
        sql = (
            "SELECT * FROM eval_items WHERE eval = ? AND iteration = ?"
            + (" AND judge = ?" if judge is not None else "")
            + " ORDER BY item_id"
        )
        return self.fetch(sql, [name, it] + ([judge] if judge is not None else []))

    def record_numbers(self, name: str, it: int, judge: str, numbers: dict[str, tuple], details: dict) -> None:
        """One eval's numbers for a model iteration and judge (metric -> (value, ci_low, ci_high, n)),
        as `eval_results` rows replacing the previous ones."""
        rows = [
            {
                "eval": name,
                "iteration": it,
                "judge": judge,
                "metric": m,
                "value": v,
                "ci_low": lo,
                "ci_high": hi,
                "n": n,
                "details": details,
            }
            for m, (v, lo, hi, n) in numbers.items()
        ]
        with self.tx() as con:
            con.execute(
                "DELETE FROM eval_results WHERE eval = ? AND iteration = ? AND judge = ?", [name, it, judge]
            ).fetchall()
            self.insert(con, "eval_results", rows)

    def adopt_probe_items(self, other: Path, iteration: int) -> int:
        """Copy another run's probe judgements of model iteration `iteration` (`eval_items` rows of
        `probe:*` evals) into this run, keeping their ids: for a run whose model and judge at that
        point are the same (`mrtk study`: M1 is every variant's seed model), so its probe stage finds
        them stored and judges nothing again. Returns the rows copied."""
        with self.tx() as con:
            quoted = str(Path(other).resolve()).replace("'", "''")
            con.execute(f"ATTACH '{quoted}' AS other (READ_ONLY)").fetchall()
            try:
                n = con.execute(
                    """INSERT INTO eval_items SELECT * FROM other.eval_items o WHERE o.eval LIKE 'probe:%' AND o.iteration = ?
                                   AND o.item_id NOT IN (SELECT item_id FROM eval_items)""",
                    [iteration],
                ).fetchall()[0][0]
            finally:
                con.execute("DETACH other").fetchall()
        return n

    def health_results(self) -> list[dict]:
        """The judge-health numbers (human probe pairs, the frozen drift set) of every iteration."""
        return self.fetch("SELECT * FROM eval_results WHERE eval LIKE 'probe:%' OR eval = 'frozen'")

    def truth_results(self) -> list[dict]:
        """The ground-truth numbers (eval `truth`, evals/truth.py) of every model iteration."""
        return self.fetch("SELECT * FROM eval_results WHERE eval = 'truth' ORDER BY iteration, metric")

    def cached_call(self, key: str) -> dict | None:
        """A successful external call with this key (eval_calls), or None."""
        rows = self.fetch(
            "SELECT raw_reply, cost_usd, logprobs FROM eval_calls WHERE call_key = ? AND status = 'ok'", [key]
        )
        return rows[0] if rows else None

    def record_call(self, row: dict) -> None:
        """One external call; a failed attempt under the same key is replaced."""
        with self.tx() as con:
            con.execute("DELETE FROM eval_calls WHERE call_key = ? AND status = 'failed'", [row["call_key"]]).fetchall()
            self.insert(con, "eval_calls", [row])


def _of_prompts(prompts: set[str] | None) -> tuple[str, list]:
    """(an SQL condition, its parameters) keeping the rows of `prompts` ids; none for None."""
    return ("", []) if prompts is None else (" AND list_contains(?, prompt_id)", [sorted(prompts)])
