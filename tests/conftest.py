"""Shared fixtures: the real embedded model and a tiny experiment config for end-to-end runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TINY = {
    "name": "tiny", "seed": 3, "iterations": 2,
    "prompts": {"per_iteration": 4},
    "actor": {"k": 2, "max_new_tokens": 16},
    "judge": {"n": 2, "max_new_tokens": 10},
    "meta_judge": {"max_new_tokens": 6},
    "pairs": {"judge_share_cap": None},
    "train": {"epochs": [1], "batch_size": 2, "micro_batch_size": 2},
    "runtime": {"max_batch_rows": 4},
}


@pytest.fixture(scope="session")
def model_dir() -> str:
    from mrtk.models import embedded_model_dir

    return str(embedded_model_dir())


@pytest.fixture()
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def mrtk(*args: str, cwd: Path, check: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run the real `mrtk` command line in a subprocess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    res = subprocess.run([sys.executable, "-m", "mrtk.cli", *args], cwd=cwd, capture_output=True, text=True, env=env, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"mrtk {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, model_dir) -> Path:
    """One finished tiny run (2 iterations on the embedded model), shared by the tests that read it."""
    work = tmp_path_factory.mktemp("run")
    cfg = work / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    mrtk("run", str(cfg), "--quiet", cwd=work, check=True, timeout=900)
    return work
