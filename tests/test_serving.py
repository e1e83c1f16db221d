"""The SGLang path at the servers' speed (issue: saturate the servers), against simulated
SGLang servers (`mrtk.bench.serving_sim`: the protocol of sglang 0.5.23, continuous batching with a
fixed step time, long-tailed answer lengths, a radix cache), in this process or as processes.

What is checked: windows sized from what `/server_info` reports; a two-iteration run keeps two
servers busy together (from the servers' own request logs); a server killed mid-stage leaves the
stage to the other, and the last one gone is a one-line error with the finished rows kept; the
SMG gateway's RL control plane for weights and memory; and (slow) kill -9 trials on the SGLang
path, the benchmark's shares of capacity and speed-ups, and flat memory over a 20k-sample stage.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, check_complete, db_of, rows
from scripted import scripted_train
from test_faults import run_trials, uninterrupted

from mrtk.backends import open_policy
from mrtk.backends.sglang import SGLangBackend
from mrtk.backends.sglang_client import OVERSUBSCRIBE, SGLangClient, window_for
from mrtk.config import validate_config
from mrtk.errors import MrtkError
from mrtk.inputs import check_inputs
from mrtk.loop import Loop
from mrtk.runs import new_run
from mrtk.bench.serving_sim import LatencyModel, SimRouter, SimServer

FAST = LatencyModel(slots=4, step_s=0.002)
SERVED = {
    **TINY,
    "prompts": {"per_iteration": 8},
    "actor": {"k": 4, "max_new_tokens": 24},
    "judge": {"n": 3, "max_new_tokens": 16},
    "backend": "sglang",
}


def served(urls: list[str], **sglang) -> dict:
    return {**SERVED, "sglang": {"urls": urls, "retries": 1, **sglang}}


def run_loop(tmp_path, raw: dict):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    inputs = check_inputs(validate_config(raw), tmp_path)
    store = new_run(inputs.cfg, str(path), tmp_path / "runs")
    Loop(store, inputs, open_policy=open_policy, train=scripted_train).run()
    return store


def busy(sim: SimServer) -> list[tuple[float, float]]:
    """The server's busy periods: the union of its /generate requests' (arrived, answered)."""
    out: list[list[float]] = []
    for _, _, start, end in sorted(r for r in sim.requests if r[3] is not None):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [tuple(x) for x in out]


def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Both busy / either busy, over the run."""
    both = sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)
    either = sum(e - s for s, e in a) + sum(e - s for s, e in b) - both
    return both / either if either else 0.0


@pytest.fixture()
def two():
    with SimServer(FAST) as a, SimServer(FAST) as b:
        yield a, b


def test_window_is_sized_from_what_the_server_reports():
    """sglang 0.5.23 /server_info: per DP rank in internal_states, else max_running_requests x dp_size, else max_inflight."""
    ranks = {
        "max_running_requests": 48,
        "dp_size": 2,
        "internal_states": [{"effective_max_running_requests_per_dp": 48}] * 2,
    }
    assert window_for(ranks, 256) == OVERSUBSCRIBE * 96
    assert window_for({"max_running_requests": 48, "dp_size": 2}, 256) == OVERSUBSCRIBE * 96
    assert window_for({"max_running_requests": None, "internal_states": [{}]}, 256) == 256
    with SimServer(LatencyModel(slots=12), dp_size=3) as sim:
        client = SGLangClient([sim.url], max_inflight=7)
        assert client.check_servers()["windows"] == {sim.url: OVERSUBSCRIBE * 12}


def test_a_prompts_samples_prefill_once_and_come_back_together(two, model_dir):
    from mrtk.backends.base import Request, SamplingParams
    from mrtk.models import tokenizer_for

    a, _ = two
    backend = SGLangBackend(SGLangClient([a.url]), tokenizer_for(model_dir))
    backend.client.check_servers()
    [gens] = backend.generate(
        [Request("Name three rivers in Europe, with a fact about each.", (1, 2, 3, 4))], SamplingParams(0.8, 0.95, 24)
    )
    [(_, samples, _, _)] = a.requests
    assert samples == 4 and len(gens) == 4 and len({g.text for g in gens}) > 1
    prompt = len(backend.chat_ids("Name three rivers in Europe, with a fact about each."))
    assert a.stats()["prefilled"] < 2 * prompt  # the K entries share the prompt's blocks: prefilled once, not 4 times


def test_two_iteration_run_keeps_both_servers_busy(two, tmp_path):
    """Structure, not speed (the share of time both were busy moves with the CPU: 60-80% here with
    bf16 hardware, 50% on a 2-core AVX2-only EPYC; `test_benchmark_meets_the_servers_capacity`
    measures it): every row is complete, the two servers held requests open at the same time,
    and each got a share of the samples."""
    a, b = two
    store = run_loop(tmp_path, served([a.url, b.url]))
    db = store.run_dir / "mrtk.duckdb"
    check_complete(db, SERVED)
    share = overlap(busy(a), busy(b))
    print(f"\nboth servers busy {share:.0%} of the generation time")
    assert share > 0, "the two servers never held requests at the same time"
    for sim in two:  # each got its share of the work (routing to the fewest outstanding, not timing)
        assert sum(r[1] for r in sim.requests) > 0.3 * sum(r[1] for s in two for r in s.requests)
    assert rows(db, "SELECT serving->>'windows' IS NOT NULL FROM runs") == [(True,)]


def test_streamed_stages_equal_the_staged_run_and_overlap(two, tmp_path):
    """issue 33 item 1: with the stages streaming into each other (the default), a run's rows equal
    those of the same run with its stages one after another (sglang.stream_stages: false), table by
    table; the judge stage starts before the actor stage ends and the meta-judge before the judge's end,
    and each stage row is done with its own start and end."""
    from conftest import snapshot

    a, b = two
    streamed = run_loop(tmp_path / "streamed", served([a.url, b.url]))
    staged = run_loop(tmp_path / "staged", served([a.url, b.url], stream_stages=False))
    one, other = (x.run_dir / "mrtk.duckdb" for x in (streamed, staged))
    check_complete(one, SERVED)
    assert snapshot(one) == snapshot(other)
    assert rows(one, "SELECT count(*) FROM meta_judgements")[0][0] > 0

    def spans(db):
        got = rows(db, "SELECT iteration, stage, status, started_at, finished_at FROM stages")
        return {(it, st): (status, start, end) for it, st, status, start, end in got}

    for db, overlapping in ((one, True), (other, False)):
        s = spans(db)
        for it in (1, 2):
            assert all(s[it, st][0] == "done" for st in ("actor", "judge", "meta_judge"))
            assert (s[it, "judge"][1] < s[it, "actor"][2]) is overlapping
            assert (s[it, "meta_judge"][1] < s[it, "judge"][2]) is overlapping
            assert s[it, "actor"][1] <= s[it, "judge"][1] <= s[it, "meta_judge"][1]


def test_a_streamed_iteration_cut_mid_stream_resumes_to_the_uninterrupted_run(two, tmp_path):
    """The server dies while actor, judge and meta-judge calls are in flight together; the run is
    resumed on another server and ends with the uninterrupted run's rows (the texts are seeded by
    request and weight version, so which server answers does not matter)."""
    from conftest import snapshot

    from mrtk.store import RunStore

    a, b = two
    whole = run_loop(tmp_path / "whole", served([a.url]))
    with SimServer(FAST) as dying:
        dying.die_after = 40  # 8 actor requests, then judge (two per unit: the structured program) and meta-judge ones
        with pytest.raises(MrtkError):
            run_loop(tmp_path / "cut", served([dying.url]))
    db = db_of(tmp_path / "cut" / "runs")
    cut = {t: rows(db, f"SELECT count(*) FROM {t}")[0][0] for t in ("responses", "judgements")}
    assert cut["responses"] > 0 and 0 < cut["judgements"] < cut["responses"] * 3, cut  # cut mid-judge
    raw = served([b.url])
    Loop(
        RunStore(db.parent), check_inputs(validate_config(raw), tmp_path), open_policy=open_policy, train=scripted_train
    ).run()
    check_complete(db, SERVED)
    assert snapshot(db) == snapshot(whole.run_dir / "mrtk.duckdb")


def test_a_server_killed_mid_stage_leaves_the_stage_to_the_other(two, tmp_path):
    a, b = two
    a.die_after = 3  # gone during the actor stage, requests in flight unanswered
    store = run_loop(tmp_path, served([a.url, b.url]))
    check_complete(store.run_dir / "mrtk.duckdb", SERVED)
    assert a.stopped and len(a.requests) == 3


def test_the_last_server_gone_is_one_line_and_finished_rows_stay(tmp_path):
    with SimServer(
        LatencyModel(slots=1, step_s=0.002)
    ) as sim:  # a window of 2 actor requests: the 5th arrives after 3 answers
        sim.die_after = 5
        with pytest.raises(MrtkError) as e:
            run_loop(tmp_path, served([sim.url]))
    message = str(e.value)
    assert "\n" not in message and sim.url in message and "mrtk run --resume" in message
    db = db_of(tmp_path / "runs")
    kept = rows(db, "SELECT count(*) FROM responses")[0][0]
    assert (
        0 < kept < SERVED["prompts"]["per_iteration"] * SERVED["actor"]["k"]
    )  # answered requests written, in-flight ones not
    # the stages stream into each other: the judge began on the answered prompts, and both end `error`
    assert rows(db, "SELECT stage, status FROM stages WHERE status != 'done' ORDER BY stage") == [
        ("actor", "error"),
        ("judge", "error"),
    ]


def test_gateway_control_plane_reaches_every_worker(two, model_dir):
    """smg 1.13.0 (--enable-rl): weight updates fan out through /v1/rl/engine/..., no worker_urls."""
    from mrtk.models import tokenizer_for

    a, b = two
    with SimRouter([a.url, b.url], rl=True) as gateway:
        client = SGLangClient([gateway.url], smg=True, retries=0)
        serving = client.check_servers()
        assert sorted(serving["worker_urls"]) == sorted([a.url, b.url]) and serving["windows"] == {
            gateway.url: 2 * OVERSUBSCRIBE * 4
        }
        backend = SGLangBackend(client, tokenizer_for(model_dir))
        backend.release()
        backend.resume()
        backend.update_weights(model_dir, "M2")
        assert (
            [p for p, _ in a.log]
            == [p for p, _ in b.log]
            == ["/release_memory_occupation", "/resume_memory_occupation", "/update_weights_from_disk"]
        )
        assert a.weight_version == b.weight_version == "M2"
        with pytest.raises(MrtkError, match="could not load /nowhere"):
            backend.update_weights("/nowhere", "M3")
    with SimRouter([a.url]) as router:  # sglang-router: no control plane, so worker_urls are needed
        with pytest.raises(MrtkError, match="no /v1/rl/workers.*HTTP 404|sglang.smg"):
            SGLangClient([router.url], smg=True, retries=0).check_servers()


@pytest.fixture(scope="module")
def sglang_baseline(tmp_path_factory):
    with SimServer(FAST) as a, SimServer(FAST) as b:
        config = served([a.url, b.url])
        yield uninterrupted(
            tmp_path_factory.mktemp("sglang_baseline"), "sglang", config, points=("generate.batch", "db.commit")
        )


@pytest.mark.slow
def test_kill_9_mid_stage_on_the_sglang_path_resumes_to_the_uninterrupted_run(sglang_baseline, tmp_path):
    """tests/test_faults.py's trial with `backend: sglang` against two simulated servers: killed
    after an answered batch, resumed, equal to the uninterrupted run row for row."""
    [result] = run_trials(tmp_path, sglang_baseline, trials=1, seed=4)
    assert result["kill"].startswith("generate.batch") and result["rows_checked"] > 0


@pytest.mark.slow
def test_more_kill_9_trials_on_the_sglang_path(sglang_baseline, tmp_path):
    results = run_trials(tmp_path, sglang_baseline, trials=4, seed=5)
    assert len(results) == 4


def test_client_cost_is_measured_by_part():
    """issue 33 item 2, structure only (no speed here): `mrtk bench --only serving` reports, per stage,
    the client's CPU per sample against one fast simulated server, the samples per second one core
    sustains at that cost, and shares of that CPU by part (tokenize, HTTP with JSON, DuckDB writes),
    which are parts of it: each in [0, 1], together at most the whole."""
    from mrtk.bench.serving import CLIENT_PARTS, CLIENT_QUICK, client_cost, fmt_client

    cost = client_cost(quick=True)
    sz = CLIENT_QUICK
    assert {k: v["samples"] for k, v in cost.items()} == {
        "actor": sz.prompts * sz.k,
        "judge": min(sz.judged, sz.prompts * sz.k) * sz.n,
        "meta-judge": sz.meta_responses * sz.n * (sz.n - 1),
    }
    for v in cost.values():
        assert v["cpu_s"] > 0 and v["ms_per_sample"] == pytest.approx(1000 * v["cpu_s"] / v["samples"], rel=0.01)
        assert v["samples_per_cpu_s"] == pytest.approx(v["samples"] / v["cpu_s"], rel=0.01)
        shares = [v[f"share_{p}"] for p in CLIENT_PARTS]
        assert all(0 <= x <= 1 for x in shares) and sum(shares) <= 1.05  # thread CPU inside process CPU
        assert v["share_tokenize"] > 0 and v["share_http_json"] > 0 and v["share_duckdb"] > 0
    assert "ms/sample" in fmt_client(cost)


@pytest.mark.slow
@pytest.mark.alone
def test_benchmark_meets_the_servers_capacity():
    """`mrtk bench --only serving`: >= 90% of capacity with one server, >= 3.6x with four and
    through a router, for the actor, judge and meta-judge stages."""
    from mrtk.bench.serving import fmt, run_serving_bench

    # Margins: with bf16 hardware (2026-12-02) the stages ran at 93-97% of one server and 3.79-4.03x
    # on four; on the 2-core AVX2-only EPYC of issue 31 this test passed (its figures were not kept),
    # and a busy 2-core machine at 5 ms steps gave 3.3x (README). The simulated servers' 8 ms steps
    # are the same on both CPU kinds; what moves is the client's and the stand-ins' CPU. One more
    # measurement when the first misses: on this 2-core machine, alone, the same stage gave 2.99x in
    # one run and 3.74x minutes later (judge, 4 servers, 2026-12-03); a miss twice running is a
    # defect, not noise.
    for attempt in (1, 2):
        report = run_serving_bench()
        print("\n" + fmt(report))
        misses = [
            (stage, by)
            for stage, by in report["stages"].items()
            if by["1 server"]["of_capacity"] < 0.9 or by["speedup 4 servers"] < 3.6 or by["speedup router + 4"] < 3.6
        ]
        if not misses:
            from mrtk.bench.serving import client_cost, fmt_client

            print(fmt_client(client_cost()))  # the client's CPU per sample: reported, no threshold yet (issue 33)
            return
        print(f"attempt {attempt}: below the thresholds: {[m[0] for m in misses]}")
    raise AssertionError(misses)


def test_iteration_window_is_measured_staged_and_streamed():
    """issue 33 item 1, structure only (the shares are the benchmark's): the bench's iteration runs
    the loop's steps 1-3 both ways on the same servers, to the same rows; streamed, the judge starts
    before the actor ends and the meta-judge before the judge ends; staged, each after the one before."""
    from mrtk.bench.serving import fmt_window, iteration_window

    report = iteration_window(quick=True, model=LatencyModel(slots=16, step_s=0.004), servers=(1,))
    by = report["1 server"]
    assert by["staged"]["samples"] == by["streamed"]["samples"] and by["staged"]["tokens"] == by["streamed"]["tokens"]
    assert by["streamed"]["samples"]["meta_judgements"] > 0
    for mode, overlapping in (("staged", False), ("streamed", True)):
        s = by[mode]["stages"]
        assert (s["judge"][0] < s["actor"][1]) is overlapping and (s["meta_judge"][0] < s["judge"][1]) is overlapping
        assert all(0 <= a <= b <= 1 for a, b in s.values()) and 0 < by[mode]["of_capacity"] <= 1.05
    assert "streamed/staged" in fmt_window(report)


@pytest.mark.slow
@pytest.mark.alone
def test_streamed_iteration_keeps_the_servers_full():
    """issue 33's done-when: one iteration's actor + judge + meta-judge window, 512 prompts x K=4 on
    64-slot servers at 40 ms steps, streamed: >= 90% of capacity on one server, >= 85% on four. One more
    measurement when the first misses (the bench test's rule above)."""
    from mrtk.bench.serving import fmt_window, iteration_window

    for attempt in (1, 2):
        report = iteration_window()
        print("\n" + fmt_window(report))
        got = {k: report[k]["streamed"]["of_capacity"] for k in ("1 server", "4 servers")}
        if got["1 server"] >= 0.9 and got["4 servers"] >= 0.85:
            return
        print(f"attempt {attempt}: below the thresholds: {got}")
    raise AssertionError(got)


@pytest.mark.slow
def test_memory_stays_flat_over_a_20k_sample_stage(tmp_path, model_dir):
    """A 20k-sample actor stage against a fast simulated server, in a fresh process: peak
    resident memory under 1 GB (rows go to DuckDB as they finish, nothing is held). The peak is
    the child's own VmHWM: its ru_maxrss also carries the peak of the pytest process that
    spawned it (Linux folds the old memory map's high-water mark into it across exec), 5.8 GB
    after the slow suite's real-model runs."""
    import subprocess

    script = f"""
import sys
from pathlib import Path
from mrtk.bench.serving_sim import LatencyModel, SimServer
from mrtk.backends.sglang import SGLangBackend
from mrtk.backends.sglang_client import SGLangClient
from mrtk.config import load_config
from mrtk.models import tokenizer_for
from mrtk.prompts import load_template
from mrtk.lanes import run_chunks
from mrtk.stages import actor
from mrtk.store import RunStore
from mrtk.ui import QuietUI
cfg = load_config(None, ["actor.k=4", "actor.max_new_tokens=64"])
store = RunStore({str(tmp_path / "run")!r}); store.migrate()
with SimServer(LatencyModel(slots=256, step_s=0.001)) as sim:
    client = SGLangClient([sim.url]); client.check_servers()
    backend = SGLangBackend(client, tokenizer_for({model_dir!r}))
    prompts = [{{"prompt_id": f"p{{i}}", "text": f"Question {{i}}: describe a city you know."}} for i in range(5000)]
    t = load_template(cfg.actor.template, role="actor")
    run_chunks(store, QuietUI(), "actor", prompts, 4, lambda rows, go: actor.run_actor(backend, rows, cfg.actor, t, iteration=1,
               run_seed=1, model_version="M1", on_progress=go), "responses", 256, lambda: backend)
hwm_kb = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))
print(store.count("responses"), hwm_kb // 1024)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    count, peak_mb = map(int, out.stdout.split()[-2:])
    print(f"\n{count} samples streamed: peak resident {peak_mb} MB")
    assert count == 20_000 and peak_mb < 1024, (count, peak_mb)


@pytest.mark.parametrize("smg", [True, False])
def test_a_weight_update_that_times_out_on_one_worker_is_not_resent_to_the_others(two, model_dir, smg):
    """issue 33: worker b's refit outlasts the control timeout (it finishes during the backoff). The
    retry asks every worker its weight version first and sends the update to none: each worker is
    refit once. Before, the retry re-sent the whole fan-out, refitting a (and b) twice."""
    from mrtk.models import tokenizer_for

    a, b = two
    for w in (a, b):
        w.log.clear()
        w.weight_version = "M1"
    b.refit_s = 1.0
    try:
        with SimRouter([a.url, b.url], rl=True) as gateway:
            client = SGLangClient(
                [gateway.url] if smg else [a.url, b.url],
                smg=smg,
                retries=2,
                backoff_s=1.5,
                timeout_s=0.5,
            )
            SGLangBackend(client, tokenizer_for(model_dir)).update_weights(model_dir, "M2")
    finally:
        b.refit_s = 0.0
    assert a.weight_version == b.weight_version == "M2"
    assert [p for p, _ in a.log] == [p for p, _ in b.log] == ["/update_weights_from_disk"]


def test_the_gateway_stand_in_answers_as_smg(two):
    """A fan-out without a selector is a 400; one worker down is a 207 naming it in `failed`."""
    import json
    import urllib.request

    a, b = two
    with SimRouter([a.url, "http://127.0.0.1:9"], rl=True) as gateway:
        req = urllib.request.Request(gateway.url + "/v1/rl/engine/model_info", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 400
        req = urllib.request.Request(
            gateway.url + "/v1/rl/engine/model_info?selector=engine%3Dsglang", data=b"{}", method="POST"
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 207
            answer = json.loads(r.read())
        assert answer["succeeded"] == 1 and answer["failed"][0]["url"] == "http://127.0.0.1:9"


def test_a_worker_that_never_takes_the_update_is_dropped_and_the_rest_go_on(two, model_dir):
    """Servers of their own (no router): a worker that answers no weight update after every retry is
    dropped as generation drops a dead server; the others hold the new version. Alone, it is the error."""
    from mrtk.models import tokenizer_for

    a, b = two
    for w in (a, b):
        w.weight_version = "M1"
    b.refit_s = 2.0
    try:
        client = SGLangClient([a.url, b.url], retries=1, backoff_s=0.01, timeout_s=0.5, control_timeout_s=0.3)
        SGLangBackend(client, tokenizer_for(model_dir)).update_weights(model_dir, "M2")
        assert a.weight_version == "M2" and [s.url for s in client.slots if s.dead] == [b.url]
        alone = SGLangClient([b.url], retries=0, backoff_s=0.01, timeout_s=0.5, control_timeout_s=0.3)
        with pytest.raises(MrtkError, match="control_timeout_s"):
            SGLangBackend(alone, tokenizer_for(model_dir)).update_weights(model_dir, "M3")
    finally:
        b.refit_s = 0.0


def test_future_guided_chosen_refits_the_servers_to_the_temporary_model_by_its_own_name(two, tmp_path):
    """pairs.chosen_from: future against the stand-ins: the servers are refitted to F<t+1> under the
    weight version F<t+1> (not M1, which the answer check would then take for M_t's), then back to
    M_t for the judge; every stage finishes and the temporary models are gone."""
    a, b = two
    raw = served([a.url, b.url])
    raw["pairs"] = {**TINY["pairs"], "rejected_from": "initial", "chosen_from": "future"}
    store = run_loop(tmp_path, raw)
    db = store.run_dir / "mrtk.duckdb"
    assert rows(db, "SELECT status FROM runs") == [("success",)]
    for sim in two:
        updates = [
            (Path(body["model_path"]).name, body.get("weight_version"))
            for path, body in sim.log
            if path == "/update_weights_from_disk"
        ]
        assert ("F2", "F2") in updates and ("F3", "F3") in updates, updates
        # a run's own model directories go by their names; the base model (outside the run) is M1
        assert all(v == (n if n[:1] in "MF" and n[1:].isdigit() else "M1") for n, v in updates), updates
    assert rows(db, "SELECT iteration, model_version, count(*) FROM future_responses GROUP BY ALL ORDER BY 1") == [
        (1, "F2", 8 * 4),
        (2, "F3", 8 * 4),
    ]
    assert not list((store.run_dir / "models").glob("F*"))


def test_lora_weight_sync_loads_adapters_not_models(tmp_path):
    """sglang.weight_sync: lora against the stand-ins: no model is loaded from disk; M2 reaches each
    server once, as the adapter M1 -> M2 saved in its model directory, named by version and weights;
    iteration 1's requests name no adapter and iteration 2's all name M2's. Servers without
    --enable-lora are one line naming the fix, with iteration 1's rows kept."""
    with SimServer(FAST, enable_lora=True) as a, SimServer(FAST, enable_lora=True) as b:
        store = run_loop(tmp_path, served([a.url, b.url], weight_sync="lora"))
    db = store.run_dir / "mrtk.duckdb"
    check_complete(db, SERVED)
    for sim in (a, b):
        assert [p for p, _ in sim.log if p == "/update_weights_from_disk"] == []
        loads = [(body["lora_name"], Path(body["lora_path"])) for p, body in sim.log if p == "/load_lora_adapter"]
        assert len(loads) == 1 and loads[0][0].startswith("M2-"), loads
        assert loads[0][1] == (store.run_dir / "models" / "M2" / "lora").resolve()
        assert set(sim.lora_samples) == {None, loads[0][0]} and all(sim.lora_samples.values())
    (tmp_path / "plain").mkdir()
    with SimServer(FAST) as plain:
        with pytest.raises(MrtkError, match="could not load the LoRA adapter .*--enable-lora"):
            run_loop(tmp_path / "plain", served([plain.url], weight_sync="lora"))
    assert rows(db_of(tmp_path / "plain" / "runs"), "SELECT count(*) FROM responses WHERE iteration = 1")[0][0] == 8 * 4
