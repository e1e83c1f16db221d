"""Config loading: every bad value is refused up front, naming the key."""

import pytest

from mrtk.config import at, load_config, validate_config
from mrtk.errors import MrtkError


def test_shipped_configs_validate():
    default = load_config("default")
    paper = load_config("paper")
    assert default.iterations >= 2 and default.judge.score_mode == "structured"
    assert (paper.actor.k, paper.judge.n, paper.train.beta, paper.train.lr) == (7, 11, 0.1, 5e-6)
    assert paper.pairs.rho == [0.0, 0.32, 0.32, 0.4] and paper.train.epochs == [6, 4, 2, 2]


def test_paper_preset_is_the_paper():
    """Every number of docs/METHOD.md in paper.yaml, and none of NeMo's filters (those are `nemo`)."""
    p = load_config("paper")
    assert (p.iterations, p.prompts.per_iteration, p.actor.k, p.judge.n) == (4, 5000, 7, 11)
    assert all((s.temperature, s.top_p) == (0.8, 0.95) for s in (p.actor, p.judge, p.meta_judge))
    assert (p.judge.template, p.judge.score_mode, p.meta_judge.mode, p.meta_judge.show_scores) == (
        "judge_additive5",
        "free_text",
        "free_text",
        True,
    )
    assert p.pairs.rho == [0.0, 0.32, 0.32, 0.4] and p.pairs.max_chosen_chars == [2500, None, None, None]
    assert p.meta_judge.max_chosen_chars == [1100, 1000, None, None] and p.pairs.judge_iterations == [1, 2]
    assert (p.pairs.drop_same_score, p.pairs.drop_identical_text, p.pairs.judge_share_cap) == (False, False, None)
    assert (p.train.beta, p.train.lr, p.train.batch_size, p.train.scheduler) == (0.1, 5e-6, 32, "cosine")
    assert p.train.epochs == [6, 4, 2, 2] and p.train.schedule_epochs == [10] and p.train.loss_type == ["sigmoid"]
    assert p.backend == "sglang" and p.model == "meta-llama/Meta-Llama-3-8B-Instruct"
    # SFT on EFT (appendix A.3): a 10-epoch cosine stopped at epoch 5, lr 5e-8, global batch 32, full fine-tuning
    assert (p.sft.epochs, p.sft.schedule_epochs, p.sft.horizon, p.sft.lr, p.sft.batch_size, p.sft.lora) == (
        5,
        10,
        10,
        5e-8,
        32,
        None,
    )
    nemo = load_config("nemo")
    assert (nemo.pairs.drop_same_score, nemo.pairs.drop_identical_text, nemo.pairs.judge_share_cap) == (
        True,
        True,
        0.15,
    )
    assert (nemo.meta_judge.template, nemo.meta_judge.show_scores) == ("meta_judge_nemo", False)
    assert (p.meta_judge.require_variance, nemo.meta_judge.require_variance) == (False, True)
    assert nemo.model_dump(exclude={"name", "pairs", "meta_judge"}) == p.model_dump(
        exclude={"name", "pairs", "meta_judge"}
    )


def test_overrides():
    cfg = load_config("default", ["judge.n=5", "pairs.rho=[0.1, 0.2]", "train.lr=1e-4"])
    assert cfg.judge.n == 5 and cfg.pairs.rho == [0.1, 0.2] and cfg.train.lr == 1e-4


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"actor": {"kk": 3}}, "unknown key 'actor.kk'"),
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"actor": {"k": 1}}, "actor.k"),
        ({"judge": {"n": 1}}, "judge.n"),
        ({"pairs": {"rho": [0.0, 1.5]}}, "pairs.rho"),
        ({"train": {"lr": -1e-5}}, "train.lr"),
        ({"judge": {"n": "three"}}, "judge.n"),
        ({"pairs": {"judge_iterations": [3]}, "iterations": 2}, "judge_iterations"),
        ({"judge": {"score_mode": "vibes"}}, "judge.score_mode"),
        ({"sft": {"epochs": 5, "schedule_epochs": 3}}, "sft.schedule_epochs"),
    ],
)
def test_bad_values_name_the_key(raw, message):
    with pytest.raises(MrtkError, match=message.replace(".", r"\.")):
        validate_config(raw)


def test_bad_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("actor: [unclosed\n")
    with pytest.raises(MrtkError, match="not valid YAML"):
        load_config(p)


def test_per_iteration_values_repeat_last():
    assert [at([0.0, 0.32], t) for t in (1, 2, 3, 4)] == [0.0, 0.32, 0.32, 0.32]


def _literal_fields(model, prefix=""):
    """(dotted key, allowed values, is a list) of every Literal field of the config, nested sections included."""
    from typing import Literal, get_args, get_origin

    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        ann, key = field.annotation, f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _literal_fields(ann, key + ".")
        elif get_origin(ann) is Literal:
            yield key, get_args(ann), False
        elif get_origin(ann) is list and get_origin(get_args(ann)[0]) is Literal:
            yield key, get_args(get_args(ann)[0]), True


LITERALS = list(_literal_fields(__import__("mrtk.config", fromlist=["RunConfig"]).RunConfig))


def test_literal_fields_found():
    keys = {k for k, _, _ in LITERALS}
    assert {"train.bf16", "runtime.inference_dtype", "judge.score_mode", "backend", "train.loss_type"} <= keys


@pytest.mark.parametrize("key, value, is_list", [(k, v, lst) for k, vals, lst in LITERALS for v in vals])
def test_every_literal_value_through_set(key, value, is_list):
    """`--set train.bf16=off` must stay the string 'off' (YAML 1.1 reads it as False)."""
    extra = {
        ("backend", "sglang"): ["sglang.url=http://127.0.0.1:30000"],
        ("rewards", "verifier"): ["pairs.judge_iterations=[]"],  # the control arm runs no meta-judge
        ("train.consistency_ties", "tau_b"): ["train.consistency=avg"],  # shapes consistency: refused while off
        ("train.consistency_first_round", "skip"): ["train.consistency=avg"],
        ("pairs.chosen_from", "future"): ["pairs.rejected_from=initial"],  # trains on the anchored pairs
        ("sglang.weight_sync", "lora"): ["backend=sglang", "sglang.url=http://127.0.0.1:30000"],  # serving only
    }.get((key, value), [])
    cfg = load_config("default", [f"{key}={'[' + value + ']' if is_list else value}", *extra])
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    assert node == ([value] if is_list else value)


@pytest.mark.parametrize(
    "text, expected", [("on", True), ("off", False), ("true", True), ("False", False), ("yes", True), ("no", False)]
)
def test_bool_fields_take_on_off(text, expected):
    assert load_config("default", [f"meta_judge.show_scores={text}"]).meta_judge.show_scores is expected


def test_set_reads_numbers_nulls_and_strings_by_field():
    cfg = load_config(
        "default",
        [
            "train.lr=1e-4",
            "runtime.threads=1",
            "sft.file=null",
            "pairs.max_chosen_chars=[2500, null]",
            "name=123",
            "train.lora={r: 8, dropout: 0.1}",
        ],
    )
    assert cfg.train.lr == 1e-4 and cfg.runtime.threads == 1 and cfg.sft.file is None
    assert (
        cfg.pairs.max_chosen_chars == [2500, None]
        and cfg.name == "123"
        and (cfg.train.lora.r, cfg.train.lora.dropout) == (8, 0.1)
    )


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.bf16=maybe", "train.bf16"),
        ("judge.n=three", "judge.n"),
        ("meta_judge.show_scores=perhaps", "meta_judge.show_scores"),
    ],
)
def test_set_bad_values_still_name_the_key(item, message):
    with pytest.raises(MrtkError, match=message.replace(".", r"\.")):
        load_config("default", [item])


def test_consistency_options_apply_to_consistency_only():
    """CREAM's options shape train.consistency: avg; set while it is off they are refused, and the unclamped
    e (above 0.5: the reversed pairs) is refused beside a loss other than sigmoid alone."""
    with pytest.raises(MrtkError, match="which is off"):
        load_config("default", ["train.consistency_clamp=true"])
    with pytest.raises(MrtkError, match="sigmoid loss alone"):
        load_config("default", ["train.consistency=avg", "train.loss_type=[sigmoid, sft]"])
    cfg = load_config(
        "default", ["train.consistency=avg", "train.loss_type=[sigmoid, sft]", "train.consistency_clamp=on"]
    )
    assert cfg.train.consistency_clamp is True and cfg.train.consistency_ties == "ordinal"


@pytest.mark.parametrize(
    "items, message",
    [
        (
            ["train.sync_every_steps=2", "train.trainer=trl"],
            "carries the adapter and its optimizer state.*trainer is trl",
        ),
        (["train.sync_every_steps=2", "train.lora=null"], "carries the adapter.*full fine-tuning"),
        (["train.sync_every_steps=2", "train.epochs=[2, 1]"], r"set train\.epochs: \[1\]"),
        (["train.sync_every_steps=2", "train.epochs=[1]", "train.consistency=avg"], "before train.consistency: avg"),
        (["train.sync_every_steps=2", "train.epochs=[1]", "pairs.rejected_from=initial"], "pairs.rejected_from"),
        (["train.sync_every_steps=0"], "train.sync_every_steps"),
        (["sglang.stream_stages=false"], "applies to backend sglang"),
    ],
)
def test_semi_online_and_streaming_are_refused_where_they_cannot_apply(items, message):
    with pytest.raises(MrtkError, match=message):
        load_config("default", items)
    assert load_config("default", ["train.sync_every_steps=2", "train.epochs=[1]"]).train.sync_every_steps == 2


def test_semi_online_preset_is_the_default_with_the_switch_on():
    """experiments/semi_online.yaml: default.yaml with train.sync_every_steps on (and batch_size 2: 3
    segments of 2 prompts an iteration), nothing else changed."""
    on, off = load_config("semi_online"), load_config("default")
    assert (on.train.sync_every_steps, on.train.batch_size, off.train.sync_every_steps) == (1, 2, None)
    assert on.model_dump(exclude={"name", "train"}) == off.model_dump(exclude={"name", "train"})
    assert on.train.model_dump(exclude={"sync_every_steps", "batch_size"}) == off.train.model_dump(
        exclude={"sync_every_steps", "batch_size"}
    )
