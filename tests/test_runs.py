"""Run directories: reopening for resume finds data files relative to the original config."""

import json

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
    assert [p["text"] for p in check_inputs(stored_cfg, config_dir)["pool"]] == ["Hello?"]


def test_one_writer_per_run(tmp_path):
    with WriterLock(tmp_path):
        with pytest.raises(MrtkError, match="being written by another process"):
            with WriterLock(tmp_path):
                pass
