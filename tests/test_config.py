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


def test_overrides():
    cfg = load_config("default", ["judge.n=5", "pairs.rho=[0.1, 0.2]", "train.lr=1e-4"])
    assert cfg.judge.n == 5 and cfg.pairs.rho == [0.1, 0.2] and cfg.train.lr == 1e-4


@pytest.mark.parametrize("raw, message", [
    ({"actor": {"kk": 3}}, "unknown key 'actor.kk'"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"actor": {"k": 1}}, "actor.k"),
    ({"judge": {"n": 1}}, "judge.n"),
    ({"pairs": {"rho": [0.0, 1.5]}}, "pairs.rho"),
    ({"train": {"lr": -1e-5}}, "train.lr"),
    ({"judge": {"n": "three"}}, "judge.n"),
    ({"pairs": {"judge_iterations": [3]}, "iterations": 2}, "judge_iterations"),
    ({"judge": {"score_mode": "vibes"}}, "judge.score_mode"),
])
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
