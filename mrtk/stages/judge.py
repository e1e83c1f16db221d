"""Judge stage: N judgements per response, parsed per docs/METHOD.md section 2.

`Judging` is the one entry for "judge these items", whoever asks (the loop's judge stage, the
frozen drift re-judge, `mrtk judge`, `mrtk eval judge` and the probe): it picks pointwise or
pairwise from the template, knows the units (a response, or an ordered pair of responses) and the
ids each unit writes, says which units are missing given the stored ids, and runs them.

Two modes. `structured` (the embedded default; SmolLM2-135M never writes `Score: X` by
itself): a short sampled justification, then the fixed text "\\nScore: ", then the
expected score over the probabilities of the digit tokens in the template's score range.
`free_text` (the paper's): sample the whole judgement and parse its last `Score:` line.
Failures are rows with score NULL and a reason; they are never zeros.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations
from dataclasses import dataclass

from mrtk.backends.base import Backend, Progress, Request
from mrtk.config import JudgeCfg
from mrtk.parse import expected_score, p_first, parse_score, parse_verdict, sample_verdict
from mrtk.programs import PAIRWISE, raw_text, run_program, score_program
from mrtk.prompts import Template, judge_prompt
from mrtk.rows import derive_seed, format_score, judgement_id, made_by, pairwise_id
from mrtk.ties import EXACT


def rejudge_key(template: Template, score_mode: str, model_version: str) -> str:
    return f"{template.hash}.{score_mode}.{model_version}"


def judging_key(template: Template, score_mode: str, source: str, model_version: str) -> str:
    """The one key a judging job's row ids and seeds carry: the loop's own pointwise judgements the
    template hash; every other job (re-judgements, evals, any pairwise template) the template, score
    mode and model version, so they never collide with the loop's rows."""
    if source == "loop" and template.stage != "pairwise-judge":
        return template.hash
    return rejudge_key(template, score_mode, model_version)


def run_judge(
    backend: Backend,
    responses: list[dict],
    questions: dict[str, str],
    cfg: JudgeCfg,
    template: Template,
    *,
    iteration: int,
    run_seed: int,
    model_version: str,
    on_progress: Progress | None = None,
    source: str = "loop",
    key: str | None = None,
) -> list[dict]:
    """response rows -> judgement rows (N per response). Re-judgements (`source` "rejudge") are
    keyed by template hash, score mode and model, so they never collide with the loop's rows."""
    program = score_program(template) if cfg.score_mode == "structured" else None
    key = key or judging_key(template, cfg.score_mode, source, model_version)
    seeds = [
        tuple(derive_seed(run_seed, iteration, "judge", key, r["response_id"], j) for j in range(cfg.n))
        for r in responses
    ]
    requests = [
        Request(judge_prompt(template, questions[r["prompt_id"]], r["text"]), s) for r, s in zip(responses, seeds)
    ]
    params, outputs = run_program(backend, requests, cfg, program, on_progress)
    rows = []
    for r, gens, row_seeds in zip(responses, outputs, seeds):
        for j, (g, seed) in enumerate(zip(gens, row_seeds)):
            raw = raw_text(g, program)
            if program:  # the expected score over the digits' probabilities, written after the suffix
                parsed = expected_score(g.choice_probs or {})
                text = raw + format_score(parsed.value) if parsed.ok else raw
            else:
                text, parsed = raw, parse_score(raw, *template.score_range)
            rows.append(
                {
                    "judgement_id": judgement_id(r["response_id"], key, j),
                    "iteration": iteration,
                    "source": source,
                    "response_id": r["response_id"],
                    "prompt_id": r["prompt_id"],
                    "sample_idx": j,
                    "raw_text": raw,
                    "text": text,
                    "score": parsed.value,
                    "parse_status": parsed.status,
                    "parse_reason": parsed.reason,
                    "score_mode": cfg.score_mode,
                    "score_probs": g.choice_probs,
                    "score_mass": sum(g.choice_probs.values()) if g.choice_probs else None,
                    "n_chars": len(text),
                    "finish_reason": g.finish,
                    **made_by(template, model_version, params, seed, g),
                }
            )
    return rows


def pairwise_games(responses: list[dict]) -> list[tuple[dict, dict]]:
    """Every ordered pair of distinct non-duplicate responses to one prompt (both orders, so
    position bias is measurable): K responses give K*(K-1) games."""
    by_prompt: dict[str, list[dict]] = {}
    for r in sorted(responses, key=lambda r: r["response_id"]):
        if not r["is_duplicate"]:
            by_prompt.setdefault(r["prompt_id"], []).append(r)
    return [(a, b) for rs in by_prompt.values() for a in rs for b in rs if a["response_id"] != b["response_id"]]


def run_pairwise_judge(
    backend: Backend,
    games: list[tuple[dict, dict]],
    questions: dict[str, str],
    cfg: JudgeCfg,
    template: Template,
    *,
    iteration: int,
    run_seed: int,
    model_version: str,
    on_progress: Progress | None = None,
    source: str = "rejudge",
    key: str | None = None,
) -> list[dict]:
    """(response A, response B) games -> pairwise judgement rows (N per game).
    structured: justification, then "\nWinner: Response" and a verdict sampled from the
    probabilities of " A" / " B" (as the meta-judge); free_text: parse `Winner: Response X`."""
    program = PAIRWISE if cfg.score_mode == "structured" else None
    key = key or judging_key(template, cfg.score_mode, source, model_version)
    seeds = [
        tuple(
            derive_seed(run_seed, iteration, "pairwise", key, a["response_id"], b["response_id"], j)
            for j in range(cfg.n)
        )
        for a, b in games
    ]
    requests = [
        Request(template.render(question=questions[a["prompt_id"]], response_a=a["text"], response_b=b["text"]), s)
        for (a, b), s in zip(games, seeds)
    ]
    params, outputs = run_program(backend, requests, cfg, program, on_progress)
    rows = []
    for (a, b), gens, game_seeds in zip(games, outputs, seeds):
        for j, (g, seed) in enumerate(zip(gens, game_seeds)):
            raw = raw_text(g, program)
            if program:
                parsed, p_a = sample_verdict(g.choice_probs or {}, cfg.temperature, seed), p_first(g.choice_probs or {})
            else:
                parsed, p_a = parse_verdict(g.text, "response"), None
            rows.append(
                {
                    "judgement_id": pairwise_id(a["response_id"], b["response_id"], key, j),
                    "iteration": iteration,
                    "prompt_id": a["prompt_id"],
                    "response_a": a["response_id"],
                    "response_b": b["response_id"],
                    "raw_text": raw,
                    "verdict": parsed.value,
                    "p_a": p_a,
                    "parse_status": parsed.status,
                    "parse_reason": parsed.reason,
                    "winner": {"A": a["response_id"], "B": b["response_id"]}.get(parsed.value) if parsed.ok else None,
                    "score_mode": cfg.score_mode,
                    **made_by(template, model_version, params, seed, g),
                }
            )
    return rows


@dataclass(frozen=True)
class Judging:
    """One judging job. `cfg`: n, score mode and sampling (template defaults already merged);
    `source`: loop (ids keyed by the template hash), or drift / rejudge / eval (keyed by template,
    score mode and `model_version`, so they never collide with the loop's rows)."""

    template: Template
    cfg: JudgeCfg
    source: str = "loop"
    model_version: str = "M1"

    @property
    def pairwise(self) -> bool:
        return self.template.stage == "pairwise-judge"

    @property
    def scores(self) -> bool:
        """A pointwise judge scores each response; a pairwise one only orders two."""
        return not self.pairwise

    @property
    def table(self) -> str:
        return "pairwise_judgements" if self.pairwise else "judgements"

    @property
    def n(self) -> int:
        """Rows written per unit."""
        return self.cfg.n

    @property
    def key(self) -> str:
        return judging_key(self.template, self.cfg.score_mode, self.source, self.model_version)

    def units(self, responses: list[dict]) -> list:
        """What one request judges: a distinct response, or an ordered pair of a prompt's responses."""
        return pairwise_games(responses) if self.pairwise else [r for r in responses if not r["is_duplicate"]]

    def ids(self, unit) -> list[str]:
        """The row ids a unit writes (N of them), as the runs below give them."""
        if self.pairwise:
            return [pairwise_id(unit[0]["response_id"], unit[1]["response_id"], self.key, j) for j in range(self.cfg.n)]
        return [judgement_id(unit["response_id"], self.key, j) for j in range(self.cfg.n)]

    def missing(self, responses: list[dict], stored: set[str]) -> list:
        """The units with a row id not in `stored` (a unit's N rows are written in one transaction)."""
        return [u for u in self.units(responses) if not set(self.ids(u)) <= stored]

    def run(
        self,
        backend: Backend,
        units: list,
        questions: dict[str, str],
        *,
        iteration: int,
        run_seed: int,
        model_version: str | None = None,
        on_progress: Progress | None = None,
    ) -> list[dict]:
        """units -> rows of `table` (N per unit), labelled with `model_version` (default: the job's)."""
        model_version = model_version or self.model_version
        if self.pairwise:
            return run_pairwise_judge(
                backend,
                units,
                questions,
                self.cfg,
                self.template,
                iteration=iteration,
                run_seed=run_seed,
                model_version=model_version,
                on_progress=on_progress,
                source=self.source,
                key=self.key,
            )
        return run_judge(
            backend,
            units,
            questions,
            self.cfg,
            self.template,
            iteration=iteration,
            run_seed=run_seed,
            model_version=model_version,
            on_progress=on_progress,
            source=self.source,
            key=self.key,
        )

    def said(self, row: dict) -> dict:
        """What a row says about its unit: the prompt, the unit ("response" or "response_a|response_b"),
        a score (pointwise) or a verdict and p(A) (pairwise)."""
        if self.pairwise:
            return {
                "prompt_id": row["prompt_id"],
                "unit": f"{row['response_a']}|{row['response_b']}",
                "score": None,
                "verdict": row["verdict"],
                "p_a": row.get("p_a"),
            }
        return {
            "prompt_id": row["prompt_id"],
            "unit": row["response_id"],
            "score": row["score"],
            "verdict": None,
            "p_a": None,
        }

    def preferences(self, said: list[dict]) -> tuple[dict[str, str | None], tuple]:
        """For two answers of one prompt ("<prompt>#a", "<prompt>#b", as `rows.answer_id` names
        them), prompt -> "a" | "b" | None (a tie): the higher mean score, or the net of the
        pairwise verdicts in both orders (judge.verdict soft: the mean p(A) from answer a's side over both
        orders, 0.5 a tie); and (position consistency, None, None, prompts seen in
        both orders) for a pairwise judge: the share whose winner survives the swap."""
        if not self.pairwise:
            scores = mean_scores(said)
            out = {}
            for p in {s["prompt_id"] for s in said}:
                a, b = scores.get(f"{p}#a"), scores.get(f"{p}#b")
                out[p] = None if a is None or b is None or a == b else ("a" if a > b else "b")
            return out, (None, None, None, 0)
        if self.cfg.verdict == "soft":  # p(A) read from answer a's side, averaged over every row of both orders
            sides: dict[str, list[float]] = defaultdict(list)
            for s in said:
                if s.get("p_a") is not None:
                    first = s["unit"].split("|")[0]
                    sides[s["prompt_id"]].append(s["p_a"] if first.endswith("#a") else 1.0 - s["p_a"])
            soft = {p: sum(v) / len(v) for p, v in sides.items()}
            preds = {p: None if abs(v - 0.5) <= EXACT else ("a" if v > 0.5 else "b") for p, v in soft.items()}
            return preds, self._order_consistency(said)
        net: dict[str, int] = defaultdict(int)
        for s in said:
            if s["verdict"] is None:
                continue
            first, second = s["unit"].split("|")
            net[s["prompt_id"]] += 1 if (first if s["verdict"] == "A" else second).endswith("#a") else -1
        return {p: (None if v == 0 else ("a" if v > 0 else "b")) for p, v in net.items()}, self._order_consistency(said)

    @staticmethod
    def _order_consistency(said: list[dict]) -> tuple:
        """(share of prompts seen in both orders whose hard winner survives the swap, None, None, prompts seen in both)."""
        by_order: dict[tuple[str, str], int] = defaultdict(int)
        for s in said:
            if s["verdict"] is None:
                continue
            first, second = s["unit"].split("|")
            side = (first if s["verdict"] == "A" else second).rsplit("#", 1)[1]
            by_order[(s["prompt_id"], "ab" if first.endswith("#a") else "ba")] += 1 if side == "a" else -1
        both = [p for p in {p for p, _ in by_order} if (p, "ab") in by_order and (p, "ba") in by_order]
        same = sum(
            (by_order[(p, "ab")] > 0) == (by_order[(p, "ba")] > 0)
            and by_order[(p, "ab")] != 0
            and by_order[(p, "ba")] != 0
            for p in both
        )
        return same / len(both) if both else None, None, None, len(both)


def mean_scores(said: list[dict]) -> dict[str, float]:
    """unit (a response) -> the mean of its parsed scores."""
    sums: dict[str, list[float]] = defaultdict(list)
    for s in said:
        if s["score"] is not None:
            sums[s["unit"]].append(s["score"])
    return {u: sum(v) / len(v) for u, v in sums.items()}


# -- judge sets (`mrtk compare`): a set's rows read as scores and preferences --------------------
def set_scores(kind: str, rows: list[dict]) -> dict[str, float]:
    """A judge set's rows (`mrtk compare`; kind pointwise or pairwise) -> response_id -> mean valid
    score (pointwise) or share of its valid games won (pairwise)."""
    acc: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if kind == "pointwise":
            if r["score"] is not None:
                acc[r["response_id"]].append(float(r["score"]))
        elif r["winner"] is not None:
            acc[r["response_a"]].append(float(r["winner"] == r["response_a"]))
            acc[r["response_b"]].append(float(r["winner"] == r["response_b"]))
    return {rid: sum(v) / len(v) for rid, v in acc.items()}


def set_preferences(
    kind: str, rows: list[dict], scores: dict[str, float], by_prompt: dict[str, list[str]]
) -> dict[tuple[str, str], int]:
    """(x, y) with x < y -> +1 (x preferred), -1 (y preferred) or 0 (tie), for every pair of
    responses to one prompt that the set can compare."""
    prefs: dict[tuple[str, str], int] = {}
    if kind == "pointwise":
        for rids in by_prompt.values():
            for x, y in combinations(sorted(rids), 2):
                if x in scores and y in scores:
                    d = scores[x] - scores[y]
                    prefs[(x, y)] = 0 if abs(d) <= EXACT else (1 if d > 0 else -1)
        return prefs
    net: dict[tuple[str, str], int] = defaultdict(int)
    for r in rows:
        if r["winner"] is None:
            continue
        x, y = sorted((r["response_a"], r["response_b"]))
        net[(x, y)] += 1 if r["winner"] == x else -1
    return {k: (v > 0) - (v < 0) for k, v in net.items()}


def set_position_stats(kind: str, rows: list[dict]) -> dict:
    """Pairwise sets: share of verdicts for the first position, and the share of response pairs
    judged in both orders whose (majority) winner is the same in both; pointwise sets: none."""
    if kind != "pairwise":
        return {}
    valid = [r for r in rows if r["verdict"] is not None]
    votes: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for r in valid:
        votes[(r["response_a"], r["response_b"])][r["winner"]] += 1
    majority = {
        game: (c.most_common(1)[0][0] if len(c) == 1 or c.most_common(2)[0][1] > c.most_common(2)[1][1] else None)
        for game, c in votes.items()
    }
    both = [(g, (g[1], g[0])) for g in majority if g[0] < g[1] and (g[1], g[0]) in majority]
    consistent = [g for g, h in both if majority[g] is not None and majority[g] == majority[h]]
    return {
        "first_position_share": sum(r["verdict"] == "A" for r in valid) / len(valid) if valid else None,
        "position_consistency": len(consistent) / len(both) if both else None,
    }
