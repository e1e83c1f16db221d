"""The SGLang backend against SGLang's documented HTTP protocol (sglang 0.5.x).

SGLang cannot run here (it needs CUDA and pins its own torch). These tests talk to
`tests/sglang_double.py`, a stand-in that implements the endpoints mrtk uses with SGLang's
request checks and response shapes, and whose text comes from the real embedded model. What
only a real server can show (speed, the radix cache, real GPU memory release) is checked by
`scripts/gpu_check.sh` on a GPU machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, check_complete, db_of, mrtk, rows
from sglang_double import SGLangDouble, SGLangRouterDouble

from mrtk.backends.base import Request, SamplingParams
from mrtk.backends.sglang import SGLangBackend, Server, launch_command
from mrtk.backends.sglang_client import SGLangClient
from mrtk.config import validate_config
from mrtk.errors import MrtkError


@pytest.fixture(scope="module")
def double(model_dir):
    with SGLangDouble(model_dir, deterministic=True) as d:  # as mrtk launches it (sglang.deterministic)
        yield d


@pytest.fixture()
def backend(double, model_dir):
    from transformers import AutoTokenizer

    double.log.clear()
    return SGLangBackend(
        SGLangClient([double.url], retries=2, backoff_s=0.0),
        AutoTokenizer.from_pretrained(model_dir),
        weight_version="M1",
    )


def test_launch_command_from_config():
    cfg = validate_config(
        {
            "backend": "sglang",
            "sglang": {
                "launch": True,
                "port": 31000,
                "tp_size": 2,
                "dp_size": 4,
                "mem_fraction_static": 0.6,
                "extra_args": "--chunked-prefill-size 4096",
            },
        }
    )
    cmd = launch_command("/models/llama3-8b", cfg.sglang, "M3")
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    flags = dict(zip(cmd[3::2], cmd[4::2]))
    assert (
        flags["--model-path"] == "/models/llama3-8b" and flags["--host"] == "127.0.0.1" and flags["--port"] == "31000"
    )
    assert (flags["--tp-size"], flags["--dp-size"], flags["--mem-fraction-static"]) == ("2", "4", "0.6")
    assert "--enable-memory-saver" in cmd and cmd[cmd.index("--weight-version") + 1] == "M3"
    assert cmd[-2:] == ["--chunked-prefill-size", "4096"]
    with pytest.raises(MrtkError, match="backend sglang needs sglang.launch"):
        validate_config({"backend": "sglang"})
    assert validate_config({"backend": "sglang", "sglang": {"url": "http://h:1"}}).sglang.urls == ["http://h:1"]


def test_requests_follow_the_protocol_and_answers_keep_their_order(backend, double):
    params = SamplingParams(0.8, 0.95, 12)
    reqs = [Request("Name a fruit.", (7, 8, 9)), Request("Name a colour.", (3, 4, 5))]
    out = backend.generate(reqs, params)
    assert [len(row) for row in out] == [3, 3] and all(g.text for row in out for g in row)
    [(path, body)] = double.log
    # token ids, not text (SGLang would tokenize text with add_special_tokens=True: a second BOS),
    # counted exactly as mrtk counts and TRL trains; one entry per sample, each with its own seed
    from mrtk.models import chat_token_ids

    assert path == "/generate" and "text" not in body and len(body["input_ids"]) == 6
    assert body["input_ids"][0] == chat_token_ids(
        backend.tok, [{"role": "user", "content": "Name a fruit."}], add_generation_prompt=True
    )
    assert body["input_ids"][3] == backend.chat_ids("Name a colour.")
    assert body["sampling_params"][0] == {
        "temperature": 0.8,
        "top_p": 0.95,
        "max_new_tokens": 12,
        "n": 1,
        "sampling_seed": 7,
    }
    assert [sp["sampling_seed"] for sp in body["sampling_params"]] == [7, 8, 9, 3, 4, 5]
    # grouped by prompt, in input order: the same answers as asking each prompt alone
    alone = backend.generate([reqs[1]], params)[0]
    assert [g.text for g in alone] == [g.text for g in out[1]]


def test_structured_programs_read_choice_logprobs(backend, double):
    reqs = [Request("Rate: 'Paris is the capital of France.'", (1, 2))]
    [gens] = backend.generate(
        reqs, SamplingParams(0.8, 0.95, 8, ("Score:",)), suffix="\nScore: ", choices={str(d): str(d) for d in range(6)}
    )
    assert all(set(g.choice_probs) == set("012345") and 0.05 < sum(g.choice_probs.values()) <= 1.0 + 1e-6 for g in gens)
    second = double.log[-1][1]
    assert second["return_logprob"] is True and second["sampling_params"][0]["max_new_tokens"] == 1
    suffix_ids = backend.tok("\nScore: ", add_special_tokens=False)["input_ids"]
    assert (
        all(x[-len(suffix_ids) :] == suffix_ids for x in second["input_ids"])
        and len(second["token_ids_logprob"][0]) == 6
    )
    assert all(
        x[: len(backend.chat_ids(reqs[0].prompt))] == backend.chat_ids(reqs[0].prompt) for x in second["input_ids"]
    )
    # a two-token choice ("10") goes through SGLang's regex constraint instead
    [gens] = backend.generate(
        reqs, SamplingParams(0.8, 0.95, 4), suffix="\nScore: ", choices={str(d): str(d) for d in range(1, 11)}
    )
    regex = double.log[-1][1]["sampling_params"][0]["regex"]
    assert regex.startswith("(10|") and all(sum(g.choice_probs.values()) == 1.0 for g in gens)


def test_the_stand_in_rejects_what_sglang_rejects(double):
    client = SGLangClient([double.url], retries=0, backoff_s=0.0)
    with pytest.raises(MrtkError, match=r"SGLang refused /generate: HTTP 400 .*unknown field `seed`"):
        client.call("/generate", {"text": "hi", "sampling_params": {"seed": 3}})
    with pytest.raises(MrtkError, match=r"invalid type for `json_schema`: expected a string"):
        client.call("/generate", {"text": "hi", "sampling_params": {"json_schema": {"type": "object"}}})


def test_transient_errors_are_retried_and_a_dead_server_is_one_line(backend, double):
    double.fail_next = 2  # two HTTP 503s, then an answer
    [[g]] = backend.generate([Request("Say hi.", (1,))], SamplingParams(0.0, 1.0, 4))
    assert g.text and [p for p, _ in double.log].count("/generate") == 3
    dead = SGLangBackend(SGLangClient(["http://127.0.0.1:9"], retries=1, backoff_s=0.0), backend.tok)
    with pytest.raises(MrtkError, match=r"did not answer /generate after 2 tries.*mrtk run --resume"):
        dead.generate([Request("x", (1,))], SamplingParams(0.0, 1.0, 2))


def test_weight_version_mismatch_is_caught(backend, double):
    backend.weight_version = "M9"
    with pytest.raises(MrtkError, match="SGLang served weight version 'M1', the loop expects 'M9'"):
        backend.generate([Request("x", (1,))], SamplingParams(0.0, 1.0, 2))


def test_launched_server_is_always_stopped(model_dir, tmp_path):
    """Server() starts a child in its own process group, waits for /health, and stops it on the
    way out of the `with`, also when the body raises."""
    port = 31_000 + os.getpid() % 1000
    cmd = [sys.executable, str(Path(__file__).parent / "sglang_double.py"), "--model", model_dir, "--port", str(port)]
    server = Server(cmd, f"http://127.0.0.1:{port}", tmp_path / "sglang.log", startup_timeout_s=120)
    with pytest.raises(RuntimeError, match="boom"):
        with server:
            pid = server.proc.pid
            assert SGLangClient([server.url]).call("/model_info")["weight_version"] == "M1"
            raise RuntimeError("boom")
    assert server.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    failing = Server(
        [sys.executable, "-c", "import sys; sys.exit(3)"],
        "http://127.0.0.1:9",
        tmp_path / "x.log",
        startup_timeout_s=30,
    )
    with pytest.raises(MrtkError, match="SGLang exited with code 3 while starting"):
        failing.__enter__()


def sglang_config(tmp_path: Path, url: str) -> Path:
    cfg = dict(TINY, backend="sglang", sglang={"urls": [url], "retries": 1, "request_timeout_s": 600})
    path = tmp_path / "sglang.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_loop(config: Path, cwd: Path, how: str) -> None:
    """`mrtk run CONFIG` (real DPO, a subprocess), or the same loop in-process with the real SGLang
    client and the scripted DPO step of tests/scripted.py (M_{t+1} = M_t's files, linked)."""
    if how == "subprocess":
        mrtk("run", str(config), "--quiet", cwd=cwd, check=True, timeout=1200)
        return
    from scripted import scripted_train

    from mrtk.config import load_config
    from mrtk.inputs import check_inputs
    from mrtk.loop import Loop
    from mrtk.runs import new_run

    inputs = check_inputs(load_config(config), config.parent)
    Loop(new_run(inputs.cfg, str(config), cwd / "runs"), inputs, train=scripted_train).run()


# Both slow: the stand-in decodes each input alone in fp32 with the real model (100-165 s a run here)
HOW = [
    pytest.param("in-process", id="in-process", marks=pytest.mark.slow),
    pytest.param("subprocess", id="subprocess", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("how", HOW)
def test_run_on_sglang_swaps_weights_in_order(model_dir, tmp_path, how):
    """A whole tiny run through the SGLang backend: release -> train -> resume -> update -> flush
    between iterations, every row tagged with its weights."""
    with SGLangDouble(model_dir, deterministic=True) as d:
        run_loop(sglang_config(tmp_path, d.url), tmp_path, how)
        paths = [p for p, _ in d.log if p != "/generate"]
        assert paths == [
            "/server_info",
            "/update_weights_from_disk",  # attach: version check, then the loop loads M1 itself
            "/release_memory_occupation",
            "/resume_memory_occupation",
            "/update_weights_from_disk",  # it flushes itself
            "/release_memory_occupation",
            "/resume_memory_occupation",
        ]
        updates = [b for p, b in d.log if p == "/update_weights_from_disk"]
        assert updates[1]["weight_version"] == "M2" and updates[1]["model_path"].endswith("models/M2")
        # iteration 1 generates with M1 until the release; iteration 2 only after the update and the flush
        order = [p for p, _ in d.log]
        release, update = order.index("/release_memory_occupation"), order.index("/update_weights_from_disk", 2)
        assert (
            "/generate" in order[:release]
            and "/generate" not in order[release : update + 1]
            and order[update + 1] == "/generate"
        )
        # every request is token ids with one BOS-free chat prompt, one entry per sample with distinct seeds
        gens = [b for p, b in d.log if p == "/generate"]
        assert all("input_ids" in b and "text" not in b for b in gens)
        actor = [b for b in gens if b["sampling_params"][0]["max_new_tokens"] == TINY["actor"]["max_new_tokens"]]
        seeds = [sp["sampling_seed"] for b in actor for sp in b["sampling_params"]]
        assert all(sp["n"] == 1 for b in actor for sp in b["sampling_params"]) and len(seeds) == len(set(seeds))
    db = db_of(tmp_path / "runs")
    check_complete(db)
    assert rows(
        db, "SELECT iteration, min(model_version), max(model_version) FROM responses GROUP BY 1 ORDER BY 1"
    ) == [(1, "M1", "M1"), (2, "M2", "M2")]
    serving = json.loads(rows(db, "SELECT serving FROM runs")[0][0])
    assert serving["seeds_honoured"] is True and serving["versions"] == {d.url: "0.5.23"}
    # the K samples of a prompt differ although the server is seeded (one entry per sample)
    assert (
        rows(db, "SELECT count(*) FROM responses WHERE is_duplicate")[0][0]
        < rows(db, "SELECT count(*) / 2 FROM responses")[0][0]
    )


@pytest.mark.parametrize("how", HOW)
def test_run_through_a_router_sends_control_calls_to_every_worker(model_dir, tmp_path, how):
    """sglang-router serves generation only: generation goes through it, memory release/resume and
    weight updates to each worker (sglang.worker_urls); without worker_urls, one line up front."""
    with (
        SGLangDouble(model_dir, deterministic=True) as w1,
        SGLangDouble(model_dir, deterministic=True) as w2,
        SGLangRouterDouble([w1, w2]) as router,
    ):
        cfg = dict(TINY, backend="sglang", sglang={"urls": [router.url], "retries": 1})
        path = tmp_path / "router.yaml"
        path.write_text(yaml.safe_dump(cfg))
        res = mrtk("run", str(path), "--quiet", cwd=tmp_path, timeout=600)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "sglang.worker_urls" in res.stderr, res.stderr
        assert {p for p, _ in router.log} == {"/server_info", "/get_server_info"}  # refused before any generation
        router.log.clear()
        cfg["sglang"]["worker_urls"] = [w1.url, w2.url]
        path.write_text(yaml.safe_dump(cfg))
        (tmp_path / "ok").mkdir()
        run_loop(path, tmp_path / "ok", how)
        for w in (w1, w2):
            control = [p for p, _ in w.log if p not in ("/generate", "/server_info")]
            assert control == [
                "/update_weights_from_disk",
                "/release_memory_occupation",
                "/resume_memory_occupation",
                "/update_weights_from_disk",
                "/release_memory_occupation",
                "/resume_memory_occupation",
            ], control
            assert "/generate" in [p for p, _ in w.log]
        assert {p for p, _ in router.log} == {"/generate"}
    check_complete(db_of(tmp_path / "ok" / "runs"))


def test_text_bodies_never_crash_the_client(double):
    """/flush_cache answers plain text in SGLang 0.5.x (http_server.py:1025-1040)."""
    assert SGLangClient([double.url], retries=0).call("/flush_cache", {}).startswith("Cache flushed.")


def test_old_servers_are_refused_and_unseeded_ones_recorded(model_dir):
    with SGLangDouble(model_dir, version="0.5.2") as old:
        with pytest.raises(MrtkError, match=r"SGLang 0.5.2 at .* is older than 0.5.3"):
            SGLangClient([old.url], retries=0).check_servers()
    with SGLangDouble(model_dir, deterministic=False) as plain:
        assert SGLangClient([plain.url], retries=0).check_servers()["seeds_honoured"] is False


def test_the_stand_in_seeds_as_sglang_does(model_dir, double):
    """The stand-in is truthful: a seeded server gives n identical copies of one entry; an
    unseeded one ignores sampling_seed."""
    client = SGLangClient([double.url], retries=0)
    ids = [1, 2, 3]
    same = client.call(
        "/generate",
        {"input_ids": ids, "sampling_params": {"n": 3, "sampling_seed": 5, "max_new_tokens": 8, "temperature": 1.0}},
    )
    assert len({a["text"] for a in same}) == 1
    with SGLangDouble(model_dir, deterministic=False) as plain:
        c = SGLangClient([plain.url], retries=0)
        texts = {
            c.call(
                "/generate",
                {"input_ids": ids, "sampling_params": {"sampling_seed": 5, "max_new_tokens": 8, "temperature": 1.0}},
            )["text"]
            for _ in range(3)
        }
        assert len(texts) > 1


@pytest.mark.slow
def test_run_resumes_after_the_server_dies_mid_stage(model_dir, tmp_path):
    """The server goes away in the middle of iteration 1's judging: one-line error, the rows
    already written are kept, and --resume against a new server finishes the run."""
    work = tmp_path / "dies"
    work.mkdir()
    with SGLangDouble(model_dir) as d:
        d.die_after = 12  # the server goes away in the middle of iteration 1's judging
        res = mrtk("run", str(sglang_config(work, d.url)), "--quiet", cwd=work, timeout=1200)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "mrtk run --resume" in res.stderr, res.stderr
    db = db_of(work / "runs")
    kept = rows(db, "SELECT count(*) FROM responses")[0][0] + rows(db, "SELECT count(*) FROM judgements")[0][0]
    assert kept > 0
    cfg = yaml.safe_load((work / "sglang.yaml").read_text())
    with SGLangDouble(model_dir, port=int(cfg["sglang"]["urls"][0].rsplit(":", 1)[1])):
        mrtk("run", "--resume", str(db.parent), "--quiet", cwd=work, check=True, timeout=1200)
    check_complete(db)


def test_gpu_check_script_is_there():
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
    assert script.is_file() and os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
