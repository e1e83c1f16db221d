"""Run directories: reopening for resume finds data files relative to the original config."""

import json
from pathlib import Path

import pytest
import yaml

from mrtk.config import load_config
from mrtk.errors import MrtkError
from mrtk.inputs import check_inputs
from mrtk.runs import WriterLock, new_run, open_run


def test_resume_resolves_data_beside_the_original_config(tmp_path, monkeypatch, model_dir):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "pool.jsonl").write_text(json.dumps({"prompt": "Hello?"}) + "\n")
    (exp / "cfg.yaml").write_text(yaml.safe_dump({"prompts": {"file": "pool.jsonl"}}))
    cfg = load_config(exp / "cfg.yaml")
    store = new_run(cfg, str((exp / "cfg.yaml").resolve()), tmp_path / "runs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _, stored_cfg, config_dir = open_run(store.run_dir)
    assert stored_cfg == cfg and config_dir == exp.resolve()
    assert [p["text"] for p in check_inputs(stored_cfg, config_dir).pool] == ["Hello?"]


def test_one_writer_per_run(tmp_path):
    with WriterLock(tmp_path):
        with pytest.raises(MrtkError, match="being written by another process"):
            with WriterLock(tmp_path):
                pass


def test_stored_config_is_the_effective_one(tmp_path):
    """A template's `sampling` defaults are merged before the run row is written, so runs.config
    says what the stages used (config > template > mrtk default)."""
    from mrtk.prompts import load_template

    shipped = Path(load_template("judge_additive5").path).read_text()
    (tmp_path / "my_judge.md").write_text(
        shipped.replace("parser: score", "sampling: {temperature: 0.3, max_new_tokens: 40}\nparser: score", 1)
    )
    (tmp_path / "cfg.yaml").write_text(
        yaml.safe_dump(
            {"judge": {"template": "my_judge", "max_new_tokens": 20}, "prompts": {"template_dirs": [str(tmp_path)]}}
        )
    )
    cfg = load_config(tmp_path / "cfg.yaml")
    before = cfg.model_dump()
    inputs = check_inputs(cfg, tmp_path, load_tokenizer=False)
    assert (
        cfg.model_dump() == before
    )  # the checked config is left as it is; the effective one is built once, in inputs.cfg
    store = new_run(inputs.cfg, str(tmp_path / "cfg.yaml"), tmp_path / "runs")
    _, stored, _ = open_run(store.run_dir)
    assert (stored.judge.temperature, stored.judge.max_new_tokens) == (
        0.3,
        20,
    )  # the template's, and the config's over the template's
    assert (
        stored == inputs.cfg and check_inputs(stored, tmp_path, load_tokenizer=False).cfg == stored
    )  # a resume rebuilds the same
