"""`mrtk bench`: mrtk's fast paths against their plain baselines, in one process, on this machine.

Each workload runs mrtk's way and a baseline way on the same inputs, and reports throughput,
the ratio to the baseline, the ratio to this machine's ceiling (measured first: matmul
GFLOP/s and memory bandwidth) and the peak resident memory while it ran (sampled every 10 ms,
above the process's resident size just before). Ratios, not wall times, are the result: the
same machine can be 20% faster or slower from one minute to the next.

Workloads (sizes of the issue; `--quick` shrinks them for a smoke test), with the settings of
the embedded default experiment (experiments/default.yaml; `--set key=value` changes them):
- actor generation, batch 1 and 64, 128 new tokens (T=0.8, top-p 0.95): the embedded
  backend (the generation copy in `runtime.inference_dtype`, `auto` by default: bf16 only on
  bf16 hardware; top-k window sampler) vs HF `generate` in fp32; with `llama-cpp-python`
  installed, the batch-1 row also names llama.cpp's rate on the same GGUF;
- judge stage, 16 responses x N=3, default judge template: the structured program (rubric
  prefilled once, each response once, a short justification, then the score) vs HF fp32 `generate` of 128
  tokens on N copies of each prompt (the paper's free-text judge);
- meta-judge calls: the structured verdict vs HF fp32 `generate` of 128 tokens;
- one DPO epoch on 32 pairs: mrtk's trainer set-up vs TRL `DPOTrainer` defaults (same LoRA);
- DuckDB: 1M judgement rows through Arrow vs row-by-row `executemany` (timed on 5,000 rows),
  and a GROUP BY over the million.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PARAMS_135M = 134_515_008  # SmolLM2-135M parameters (tied embeddings counted once)


@dataclass
class Result:
    workload: str
    unit: str
    ours: float
    baseline: float | None = None
    ceiling: float | None = None
    peak_mb: float | None = None
    baseline_peak_mb: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return self.ours / self.baseline if self.baseline else None

    @property
    def of_ceiling(self) -> float | None:
        return self.ours / self.ceiling if self.ceiling else None

    def as_dict(self) -> dict:
        return {
            "workload": self.workload,
            "unit": self.unit,
            "ours": self.ours,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "ceiling": self.ceiling,
            "of_ceiling": self.of_ceiling,
            "peak_mb": self.peak_mb,
            "baseline_peak_mb": self.baseline_peak_mb,
            "note": self.note,
            **self.extra,
        }


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextmanager
def peak_rss():
    """Yields a dict whose 'mb' is the peak resident size above the starting one, once done."""
    from mrtk.ui import every

    start, box = _rss_mb(), {"mb": 0.0}

    def sample():
        box["mb"] = max(box["mb"], _rss_mb() - start)

    with every(0.01, sample):
        yield box


def timed(fn):
    with peak_rss() as mem:
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
    return out, dt, mem["mb"]


def ceilings(bf16: bool = True) -> dict:
    """Matmul GFLOP/s (fp32, and bf16 only when generation uses it: emulated bf16 at 0.4 GFLOP/s
    would take minutes at 2048^3) and copy bandwidth."""
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))[: 2 if bf16 else 1]:
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        a @ b
        reps, t0 = 6, time.perf_counter()
        for _ in range(reps):
            a @ b
        out[f"matmul_gflops_{name}"] = reps * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9
    x = torch.empty(64 * 2**20, dtype=torch.float32)  # 256 MB
    y = torch.empty_like(x)
    y.copy_(x)
    reps, t0 = 5, time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    out["bandwidth_gbs"] = reps * 2 * x.numel() * 4 / (time.perf_counter() - t0) / 1e9  # read + write
    return out


def hf_generate(model, pad_id: int, ids: list[list[int]], max_new: int) -> int:
    """The baseline: HF `generate` (T=0.8, top-p 0.95) on left-padded token ids, exactly
    `max_new` tokens per row; returns the tokens generated."""
    import torch

    width = max(map(len, ids))
    inp = torch.full((len(ids), width), pad_id)
    att = torch.zeros_like(inp)
    for i, x in enumerate(ids):
        inp[i, width - len(x) :], att[i, width - len(x) :] = torch.tensor(x), 1
    with torch.inference_mode():
        out = model.generate(
            inp.to(model.device),
            attention_mask=att.to(model.device),
            max_new_tokens=max_new,
            min_new_tokens=max_new,
            do_sample=True,
            temperature=0.8,
            top_p=0.95,
            pad_token_id=pad_id,
        )
    return (out.shape[1] - width) * len(ids)


def run_bench(
    quick: bool = False, only: list[str] | None = None, on_result=None, overrides: list[str] | None = None
) -> dict:
    """Every workload with the embedded default experiment's settings (`overrides`: `key=value`
    as `mrtk run --set`, e.g. train.micro_batch_size=4)."""
    import torch

    from mrtk.backends.base import Request, SamplingParams
    from mrtk.backends.embedded import EmbeddedBackend
    from mrtk.config import load_config
    from mrtk.hardware import apply_threads, inference_dtype
    from mrtk.training import recipe as training
    from mrtk.data import load_pool
    from mrtk.models import embedded_model_dir, load_model
    from mrtk.prompts import bind_meta_judge, judge_prompt, load_template
    from mrtk.resources import asset_dir

    want = lambda name: only is None or any(name.startswith(o) for o in only)  # noqa: E731
    exp = load_config(None, list(overrides or []))
    apply_threads(exp.runtime.threads)
    model_dir = str(embedded_model_dir())
    dtype, why = inference_dtype(exp.runtime.inference_dtype, "cpu")
    short = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}[dtype]
    ceil = ceilings(bf16=dtype == "bfloat16")
    info = {
        "threads": torch.get_num_threads(),
        "quick": quick,
        "overrides": list(overrides or []),
        "inference_dtype": dtype,
        "inference_dtype_reason": why,
        **ceil,
    }
    weight_bytes = PARAMS_135M * (4 if dtype == "float32" else 2)
    matmul_ceiling = ceil.get(f"matmul_gflops_{short}", ceil["matmul_gflops_fp32"])
    flops_per_token = 2 * PARAMS_135M
    results: list[Result] = []

    def add(r: Result):
        r.extra.setdefault(
            "dtype", dtype if r.workload.startswith(("actor", "judge", "meta")) else r.extra.get("dtype")
        )
        results.append(r)
        if on_result:
            on_result(r)

    if any(want(w) for w in ("actor_b", "judge", "meta", "dpo")):  # the models load only for these
        pool = [p["text"] for p in load_pool(asset_dir("data") / "train_prompts.jsonl")]
        new_tokens = 16 if quick else 128
        fast = EmbeddedBackend(*load_model(model_dir, dtype), max_batch_rows=64)
        ref_model, _ = load_model(model_dir, "float32")
        baseline = lambda prompts, max_new: hf_generate(
            ref_model, fast.pad_id, [fast.encode(p) for p in prompts], max_new
        )  # noqa: E731

        # warm up both paths (oneDNN picks its bf16/fp32 kernels on first use)
        fast.generate([Request(pool[0], (0,))], SamplingParams(0.8, 0.95, 4))
        baseline(pool[:1], 4)

        for batch in (1, 8) if quick else (1, 64):
            if not want(f"actor_b{batch}"):
                continue
            prompts = [pool[i % len(pool)] for i in range(batch)]
            reqs = [Request(p, (i,)) for i, p in enumerate(prompts)]
            fixed = SamplingParams(0.8, 0.95, new_tokens)
            gens, dt, mb = timed(lambda: fast.generate(reqs, fixed))
            ours_tok = sum(g.n_tokens for [g] in gens) / dt
            n_base, dt_b, mb_b = timed(lambda: baseline(prompts, new_tokens))
            ceiling = (
                (ceil["bandwidth_gbs"] * 1e9 / weight_bytes) if batch == 1 else matmul_ceiling * 1e9 / flops_per_token
            )
            extra = llama_cpp_batch1(prompts[0], new_tokens) if batch == 1 else {}
            add(
                Result(
                    f"actor_b{batch}",
                    "tok/s",
                    ours_tok,
                    n_base / dt_b,
                    ceiling,
                    mb,
                    mb_b,
                    f"{short}; ceiling: {short} weights once per step (bandwidth)"
                    if batch == 1
                    else f"{short}; ceiling: {short} matmul, 2 FLOP/param/token"
                    + (f"; llama.cpp batch 1: {extra['llama_cpp_tok_s']:.1f} tok/s" if extra else ""),
                    extra,
                )
            )

        responses = [
            g.text
            for [g] in fast.generate(
                [Request(pool[i], (100 + i,)) for i in range(16)], SamplingParams(0.8, 0.95, 16 if quick else 96)
            )
        ]
        if want("judge"):
            from mrtk.stages import judge

            cfg = exp.judge
            if quick:
                cfg = cfg.model_copy(update={"max_new_tokens": 8})
            template = load_template(cfg.template, role="judge")
            resp_rows = [{"response_id": f"r{i}", "prompt_id": f"p{i}", "text": t} for i, t in enumerate(responses)]
            questions = {f"p{i}": pool[i] for i in range(16)}
            rows, dt, mb = timed(
                lambda: judge.run_judge(
                    fast, resp_rows, questions, cfg, template, iteration=1, run_seed=0, model_version="bench"
                )
            )
            prompts = [judge_prompt(template, pool[i], t) for i, t in enumerate(responses) for _ in range(cfg.n)]
            _, dt_b, mb_b = timed(
                lambda: [baseline(prompts[i : i + 16], 16 if quick else 128) for i in range(0, len(prompts), 16)]
            )
            add(
                Result(
                    "judge_16x3",
                    "judgements/s",
                    len(rows) / dt,
                    len(prompts) / dt_b,
                    None,
                    mb,
                    mb_b,
                    f"structured, {cfg.max_new_tokens}-token justification vs 128-token free text on copies",
                    {"parsed": sum(r["score"] is not None for r in rows)},
                )
            )
        if want("meta"):
            from mrtk.stages import meta_judge

            mcfg = exp.meta_judge
            if quick:
                mcfg = mcfg.model_copy(update={"max_new_tokens": 8})
            mt = bind_meta_judge(
                load_template(mcfg.template, role="meta-judge"), load_template(exp.judge.template, role="judge")
            )
            fights = [
                (
                    {
                        "judgement_id": f"a{i}",
                        "prompt_id": f"p{i}",
                        "response_id": f"r{i}",
                        "text": f"Relevant.\nScore: {2 + i % 3}",
                    },
                    {
                        "judgement_id": f"b{i}",
                        "prompt_id": f"p{i}",
                        "response_id": f"r{i}",
                        "text": "Partly off topic.\nScore: 1",
                    },
                )
                for i in range(16)
            ]
            questions = {f"p{i}": pool[i] for i in range(16)}
            texts = {f"r{i}": t for i, t in enumerate(responses)}
            rows, dt, mb = timed(
                lambda: meta_judge.run_meta_judge(
                    fast, fights, questions, texts, mcfg, mt, iteration=1, run_seed=0, model_version="bench"
                )
            )
            prompts = [
                mt.render(
                    question=questions[a["prompt_id"]],
                    response=texts[a["response_id"]],
                    judgement_a=a["text"],
                    judgement_b=b["text"],
                )
                for a, b in fights
            ]
            _, dt_b, mb_b = timed(lambda: baseline(prompts, 16 if quick else 128))
            add(
                Result(
                    "meta_judge_16",
                    "calls/s",
                    len(rows) / dt,
                    len(prompts) / dt_b,
                    None,
                    mb,
                    mb_b,
                    f"structured verdict, {mcfg.max_new_tokens}-token justification vs 128-token free text",
                )
            )
        ref_model = fast = None  # free both copies before training
        if want("dpo"):
            add(_bench_dpo(model_dir, pool, responses, quick, exp.train.model_copy(update={"epochs": [1]})))
            results[-1].extra["dtype"] = "bfloat16 autocast" if training.use_bf16(exp.train.bf16, "cpu") else "float32"
    if want("duckdb"):
        add(_bench_duckdb(quick))
    return {"machine": info, "results": [r.as_dict() for r in results]}


def llama_cpp_batch1(prompt: str, new_tokens: int) -> dict:
    """The peer a CPU user would reach for: llama.cpp (`llama-cpp-python`, optional) on the same
    GGUF file, batch 1, this process's torch thread count; {} when it is not installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return {}
    import torch

    from mrtk.models import embedded_gguf

    llm = Llama(model_path=str(embedded_gguf()), n_ctx=1024, n_threads=torch.get_num_threads(), verbose=False)
    messages = [{"role": "user", "content": prompt}]
    llm.create_chat_completion(messages, max_tokens=4)  # warm-up
    t0 = time.perf_counter()
    out = llm.create_chat_completion(messages, max_tokens=new_tokens, temperature=0.8, top_p=0.95, seed=0)
    dt = time.perf_counter() - t0
    return {"llama_cpp_tok_s": out["usage"]["completion_tokens"] / dt}


def _bench_dpo(model_dir: str, pool: list[str], responses: list[str], quick: bool, cfg) -> Result:
    """One epoch on 32 pairs (8 in --quick): mrtk's DPO set-up (`cfg`, a train section: its own step
    where `train.trainer` picks it) vs TRL's DPOConfig defaults, same LoRA. The loss is the same on both
    sides (tests/test_packed_dpo.py)."""
    import tempfile

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from mrtk.models import load_for_training
    from mrtk.training import recipe as training
    from mrtk.training import dpo as train

    n = 8 if quick else 32
    examples = [
        {
            "pair_id": f"b{i}",
            "kind": "actor",
            "prompt": [{"role": "user", "content": pool[i % len(pool)]}],
            "chosen": [{"role": "assistant", "content": responses[i % 16]}],
            "rejected": [
                {"role": "assistant", "content": responses[(i + 5) % 16][: max(8, len(responses[(i + 5) % 16]) // 2)]}
            ],
        }
        for i in range(n)
    ]
    with tempfile.TemporaryDirectory() as work:
        _, dt, mb = timed(
            lambda: train.train_dpo(
                model_dir, examples, cfg, iteration=1, seed=0, device="cpu", work_dir=Path(work) / "ours"
            )
        )

        bf16 = training.use_bf16(cfg.bf16, "cpu")

        def baseline():
            model, tok = load_for_training(model_dir, "cpu")
            args = DPOConfig(
                output_dir=str(Path(work) / "trl"),
                use_cpu=True,
                num_train_epochs=1,
                report_to=[],
                save_strategy="no",
                disable_tqdm=True,
                # TRL 1.16 defaults to bf16 (dpo_config.py:149), emulated where the CPU lacks bf16 hardware:
                # 23.1 s a pair there against 2.0 in fp32 (AVX2-capped, 2026-12-04); bf16 as mrtk picks it
                bf16=bf16,
            )
            data = Dataset.from_list([{k: ex[k] for k in ("prompt", "chosen", "rejected")} for ex in examples])
            trainer = training.quiet(DPOTrainer)(
                model=model,
                args=args,
                train_dataset=data,
                processing_class=tok,
                peft_config=training.lora_config(cfg.lora),
            )
            training.fit_and_merge(trainer)  # merged like ours, so both sides end with a plain model

        _, dt_b, mb_b = timed(baseline)
    return Result(
        "dpo_epoch_32" if not quick else "dpo_epoch_8",
        "pairs/s",
        n / dt,
        n / dt_b,
        None,
        mb,
        mb_b,
        f"{'mrtk step (packed pairs)' if cfg.own_step else 'TRL'}, "
        f"{'bf16 autocast' if bf16 else 'fp32'}, {cfg.micro_batch_size} pair(s) per pass, checkpointing {'on' if cfg.gradient_checkpointing else 'off'} "
        f"vs TRL's DPOConfig defaults (8 pairs per pass, checkpointing on; {'bf16' if bf16 else 'fp32'} as mrtk picks it)",
    )


def _bench_duckdb(quick: bool) -> Result:
    import tempfile

    import duckdb

    n = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory() as d:
        from mrtk.store import RunStore

        store = RunStore(Path(d) / "run")
        store.migrate()
        rows = [
            {
                "judgement_id": f"j{i}",
                "iteration": 1 + i % 4,
                "response_id": f"r{i // 3}",
                "prompt_id": f"p{i // 12}",
                "sample_idx": i % 3,
                "raw_text": "The response is relevant and helpful.\nScore: 3",
                "score": float(i % 6),
                "parse_status": "ok",
                "score_mode": "structured",
                "template": "judge_additive5",
                "template_hash": "abc",
                "model_version": "M1",
                "source": "loop",
            }
            for i in range(n)
        ]
        with peak_rss() as mem:
            t0 = time.perf_counter()
            with store.tx() as con:
                store.insert(con, "judgements", rows)
            dt = time.perf_counter() - t0
        con = duckdb.connect(str(store.path))
        t0 = time.perf_counter()
        con.execute("SELECT iteration, template, count(*), avg(score) FROM judgements GROUP BY ALL").fetchall()
        group_s = time.perf_counter() - t0
        k = 5000
        con.execute("CREATE TABLE slow AS SELECT * FROM judgements LIMIT 0").fetchall()
        cols = list(rows[0])
        t0 = time.perf_counter()
        con.executemany(
            f"INSERT INTO slow ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [list(r.values()) for r in rows[:k]],
        )
        slow = k / (time.perf_counter() - t0)
        con.close()
    return Result(
        "duckdb_ingest",
        "rows/s",
        n / dt,
        slow,
        None,
        mem["mb"],
        None,
        f"{n:,} rows in {dt:.2f} s via Arrow; GROUP BY over them {group_s * 1000:.0f} ms; baseline executemany on {k:,} rows",
        {"ingest_seconds": dt, "group_by_seconds": group_s, "rows": n},
    )


def fmt_table(report: dict):
    from rich.table import Table

    m = report["machine"]
    table = Table(
        "workload",
        "dtype",
        "unit",
        "mrtk",
        "baseline",
        "ratio",
        "of ceiling",
        "peak MB (mrtk / base)",
        "note",
        title=(
            f"mrtk bench ({m['threads']} threads; generation {m['inference_dtype']}: {m['inference_dtype_reason']}; ceilings: fp32 {m['matmul_gflops_fp32']:.0f} / bf16 "
            f"{m.get('matmul_gflops_bf16') or 0:.0f} GFLOP/s, {m['bandwidth_gbs']:.1f} GB/s)"
        ),
        title_justify="left",
    )
    for r in report["results"]:
        f = lambda v, s="{:.1f}": "-" if v is None else s.format(v)  # noqa: E731
        table.add_row(
            r["workload"],
            r.get("dtype") or "-",
            r["unit"],
            f(r["ours"]),
            f(r["baseline"]),
            f(r["ratio"], "{:.2f}x"),
            f(r["of_ceiling"], "{:.0%}"),
            f"{f(r['peak_mb'], '{:.0f}')} / {f(r['baseline_peak_mb'], '{:.0f}')}",
            r["note"],
        )
    return table


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2)
