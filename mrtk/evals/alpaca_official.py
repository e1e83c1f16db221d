"""AlpacaEval 2's own annotator and length control, so mrtk's numbers sit beside the leaderboard.

The leaderboard's annotator is `weighted_alpaca_eval_gpt4_turbo` (alpaca_eval 0.6.x,
`evaluators_configs/weighted_alpaca_eval_gpt4_turbo/configs.yaml`): the chat prompt
`alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt` (ChatML, with `{instruction}`, `{output_1}`,
`{output_2}`; the outputs are named "m" and "M"), `max_tokens: 1`, `temperature: 1`,
`logprobs: true`, `top_logprobs: 5`, and `logprob_parser` with numerator "m" over "m"+"M"
(`completion_parsers.py`): the preference for output_1 is p(m) / (p(m) + p(M)), a continuous
number, not a hard verdict. mrtk reads the config and the prompt from the installed
`alpaca_eval` package or from a directory the user names (`--annotator-dir`, laid out like
`evaluators_configs/`), sends exactly that prompt with those settings through LiteLLM, and
computes the same preference. A reply without logprobs (a dry run, a server that does not
return them) falls back to the text ("m" or "M") and says so in the item's parse reason.

Length control: with `alpaca_eval` installed, its own GLM (`metrics/glm_winrate.py`,
`get_length_controlled_winrate`, glm `length_controlled_v1`: tanh of the standardised length
difference + instruction difficulty, regularised towards the gamed baselines) computes LC from
the annotations; its data file (`df_gamed.csv`: instruction difficulty and the gamed
baselines' annotations) comes from the Hugging Face cache or `--difficulty FILE`. Without them
mrtk's own GLM without the difficulty term runs, and the number is named
`lc_approx_no_difficulty`.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from mrtk.errors import MrtkError

DEFAULT_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
_CHATML = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)\n?<\|im_end\|>", re.S)


@dataclass(frozen=True)
class Annotator:
    name: str
    messages: tuple[tuple[str, str], ...]  # (role, content with {instruction} {output_1} {output_2})
    model: str
    completion_kwargs: dict
    numerator: str
    denominators: tuple[str, ...]
    source: str

    def render(self, instruction: str, output_1: str, output_2: str) -> list[dict]:
        values = {"instruction": instruction, "output_1": output_1, "output_2": output_2}
        # alpaca_eval formats with str.format on these three names; other braces in the prompt are literal
        fill = lambda text: re.sub(r"{(instruction|output_1|output_2)}", lambda m: values[m.group(1)], text)  # noqa: E731
        return [{"role": role, "content": fill(content)} for role, content in self.messages]

    def preference_first(self, text: str | None, top_logprobs: list[dict] | None) -> tuple[float | None, str]:
        """(P(output_1 is better), parse reason) as `logprob_parser` (is_binarize false) computes it."""
        if top_logprobs:
            lp = {
                t["token"]: t["logprob"] for t in top_logprobs if t.get("token") in (self.numerator, *self.denominators)
            }
            if lp:
                num = math.exp(lp[self.numerator]) if self.numerator in lp else 0.0
                den = sum(math.exp(lp[t]) for t in self.denominators if t in lp)
                return (num / den if den > 0 else None), "ok"
            return None, "no_identifier_in_top_logprobs"
        token = (text or "").strip()
        if token in self.denominators:
            return (1.0 if token == self.numerator else 0.0), "no_logprobs_text_verdict"
        return None, "no_logprobs_and_no_identifier"


def _configs_root(directory: str | Path | None) -> Path:
    if directory is not None:
        root = Path(directory)
        if not root.is_dir():
            raise MrtkError(f"--annotator-dir {root}: not a directory; give alpaca_eval's evaluators_configs/ folder")
        return root
    spec = importlib.util.find_spec("alpaca_eval")
    if spec is None or not spec.submodule_search_locations:
        raise MrtkError(
            "AlpacaEval's annotator needs the alpaca_eval package: pip install 'mrtk[alpaca]' (or --annotator-dir "
            "alpaca_eval/evaluators_configs, or --annotator mrtk for mrtk's paraphrase with hard verdicts)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "evaluators_configs"


def load_annotator(name: str = DEFAULT_ANNOTATOR, directory: str | Path | None = None) -> Annotator:
    root = _configs_root(directory)
    path = root / name / "configs.yaml"
    if not path.is_file():
        raise MrtkError(f"annotator {name!r}: no {path}; name a folder of {root}")
    cfg = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get(name)
    if not isinstance(cfg, dict) or "prompt_template" not in cfg:
        raise MrtkError(f"annotator {name!r}: {path} has no '{name}:' section with a prompt_template")
    if cfg.get("fn_completion_parser") != "logprob_parser":
        raise MrtkError(
            f"annotator {name!r} parses with {cfg.get('fn_completion_parser')!r}; mrtk implements the leaderboard's "
            "logprob_parser annotators (weighted_alpaca_eval_gpt4_turbo)"
        )
    prompt = (root / cfg["prompt_template"]).read_text(encoding="utf-8")
    messages = tuple((m.group(1), m.group(2).strip("\n")) for m in _CHATML.finditer(prompt))
    if not messages:
        messages = (("user", prompt),)
    kwargs = dict(cfg.get("completions_kwargs") or {})
    model = kwargs.pop("model_name", "gpt-4-1106-preview")
    parser = cfg.get("completion_parser_kwargs") or {}
    return Annotator(
        name=name,
        messages=messages,
        model=model,
        completion_kwargs=kwargs,
        numerator=parser.get("numerator_token", "m"),
        denominators=tuple(parser.get("denominator_tokens", ["m", "M"])),
        source=str(path),
    )


DIFFICULTY_COLUMNS = ("model", "index", "instruction_difficulty")  # what glm_winrate reads from df_gamed.csv


def check_difficulty_file(path: Path) -> None:
    """--difficulty is AlpacaEval's df_gamed.csv (a CSV with DIFFICULTY_COLUMNS), checked before any call."""
    import csv

    try:
        with open(path, encoding="utf-8", newline="") as fh:
            header = next(csv.reader(fh), [])
    except FileNotFoundError:
        raise MrtkError(f"--difficulty {path}: no such file; give AlpacaEval's df_gamed.csv") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MrtkError(
            f"--difficulty {path}: not a readable UTF-8 CSV ({type(e).__name__}); give AlpacaEval's df_gamed.csv"
        ) from None
    missing = [c for c in DIFFICULTY_COLUMNS if c not in header]
    if missing:
        raise MrtkError(
            f"--difficulty {path}: no column {missing[0]!r} (df_gamed.csv has {', '.join(DIFFICULTY_COLUMNS)}, ...); "
            "give AlpacaEval's df_gamed.csv"
        )


@contextmanager
def _local_hub_file(difficulty: Path | None):
    """alpaca_eval's GLM fetches `df_gamed.csv` with hf_hub_download; a local copy is served instead."""
    if difficulty is None:
        yield
        return
    from alpaca_eval.metrics import glm_winrate

    original = glm_winrate.hf_hub_download
    glm_winrate.hf_hub_download = lambda *a, **k: str(difficulty)
    try:
        yield
    finally:
        glm_winrate.hf_hub_download = original


def official_lc(annotations: list[dict], difficulty: Path | None = None) -> tuple[float | None, str]:
    """(LC win rate, how it was computed). `annotations`: AlpacaEval's rows (preference in 1..2,
    output_1 the baseline, output_2 the model, index, generator_1, generator_2)."""
    if importlib.util.find_spec("alpaca_eval") is None:
        return None, "alpaca_eval not installed"
    import logging

    import pandas as pd

    try:  # importing alpaca_eval runs its utils.py, which needs pkg_resources (setuptools < 82): the [alpaca] extra caps it
        with (
            warnings.catch_warnings()
        ):  # setuptools 81 warns on every import of pkg_resources: not the user's to act on
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate
    except Exception as e:  # noqa: BLE001 - any import failure of the optional package falls back, named
        return (
            None,
            f"alpaca_eval is installed but does not import ({type(e).__name__}: {e}); pip install 'mrtk[alpaca]'",
        )
    if difficulty is None:  # only a cached copy, or a download when the hub is reachable (HF_HUB_OFFLINE unset)
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache("tatsu-lab/alpaca_eval", "df_gamed.csv", repo_type="dataset")
        if isinstance(cached, str):
            difficulty = Path(cached)
        elif os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            return (
                None,
                "AlpacaEval's GLM data (df_gamed.csv) not cached and the hub is offline; pass --difficulty df_gamed.csv",
            )
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # alpaca_eval logs at INFO on the root logger; quiet only while it runs
    try:
        with _local_hub_file(difficulty):
            out = get_length_controlled_winrate(
                pd.DataFrame(annotations),
                glm_name="length_controlled_v1",
                save_weights_dir=None,
                is_warn_extreme_changes=False,
            )
    except Exception as e:  # offline with an empty HF cache, or a file that is not df_gamed.csv
        return None, f"AlpacaEval's GLM data unavailable ({type(e).__name__}); pass --difficulty df_gamed.csv"
    finally:
        root.setLevel(level)
    return float(out["length_controlled_winrate"]), "alpaca_eval length_controlled_v1"
