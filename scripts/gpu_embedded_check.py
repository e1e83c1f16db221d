"""The embedded backend and LoRA DPO on a CUDA GPU, without SGLang.

Usage: python scripts/gpu_embedded_check.py TOKENIZER_DIR WORK_DIR

Builds a tiny random Llama (SmolLM2's tokenizer and chat template, 2 layers, grouped-query
attention) so the check needs no weights from a hub, then on `cuda`:
1. greedy output of the embedded decode loop is token-identical to HF `generate` (fp32);
2. the judge stage with the shared system + rubric prefix equals the plain path (fp32);
3. a two-iteration `mrtk run` with runtime.device=cuda: actor, judge, meta-judge, pairs, DPO,
   merge, and the rows it recorded;
4. actor generation at batch 64 x 128 tokens, embedded bf16 vs HF `generate` fp32 on the same
   GPU (a ratio for the tiny model: it shows per-step overhead, not SmolLM2's speed).
Exits non-zero on the first failed check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

DEV = os.environ.get("MRTK_CHECK_DEVICE", "cuda")  # "cpu" for a dry run of the script itself


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def main(tokenizer_dir: str, work: str) -> None:
    from mrtk.backends.base import Request, SamplingParams
    from mrtk.backends.embedded import EmbeddedBackend
    from mrtk.bench.workloads import hf_generate
    from mrtk.config import validate_config
    from mrtk.models import load_model, random_llama
    from mrtk.prompts import load_template
    from mrtk.stages.judge import run_judge

    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    print(
        "torch",
        torch.__version__,
        "cuda",
        torch.cuda.is_available(),
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
    )
    model_dir = random_llama(tokenizer_dir, work_dir / "tiny", hidden_size=128, max_positions=4096)

    model, tok = load_model(model_dir, "float32", DEV)
    be = EmbeddedBackend(model, tok)
    prompts = ["Explain why the sky is blue.", "Give me three tips for better sleep.", "What is 2+2?"]
    for p in prompts:
        [[g]] = be.generate([Request(p, (0,))], SamplingParams(0.0, 1.0, 24))
        ids = torch.tensor([be.encode(p)], device=DEV)
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
        assert g.text == tok.decode(ref[0, ids.shape[1] :], skip_special_tokens=True), (
            f"greedy differs from HF generate on {p!r}"
        )
    print(f"1. greedy == HF generate on {DEV}: ok")

    # greedy: a random model's next-token distributions are near-flat, so float rounding alone can move a sampled pick
    cfg = validate_config({}).judge.model_copy(update={"max_new_tokens": 12, "temperature": 0.0})
    template = load_template(cfg.template, role="judge")
    responses = [
        {"response_id": f"r{i}", "prompt_id": f"p{i % 3}", "text": t}
        for i, t in enumerate(["Blue light scatters.", "Sleep early.", "4", "Paris."])
    ]
    questions = {f"p{i}": q for i, q in enumerate(prompts)}
    kw = dict(iteration=1, run_seed=3, model_version="M0")
    shared = run_judge(be, responses, questions, cfg, template, **kw)
    plain = run_judge(EmbeddedBackend(model, tok, share_prefix=False), responses, questions, cfg, template, **kw)
    assert [r["raw_text"] for r in shared] == [r["raw_text"] for r in plain], "shared-prefix judge text differs"
    diff = max(abs(a["score"] - b["score"]) for a, b in zip(shared, plain))
    assert diff < 1e-3, f"shared-prefix scores differ by {diff}"
    print(f"2. shared-prefix judge == plain path on {DEV} (max score diff {diff:.2e}): ok")

    config = work_dir / "gpu.yaml"
    config.write_text(
        json.dumps(
            {
                "name": "gpu-embedded",
                "iterations": 2,
                "pairs": {"judge_iterations": [1, 2]},
                "model": model_dir,
                "runtime": {"device": DEV},
                "prompts": {"per_iteration": 8},
                "actor": {"k": 4, "max_new_tokens": 48},
                "judge": {"max_new_tokens": 16},
                "meta_judge": {"max_new_tokens": 12},
                "train": {"epochs": [1, 1]},
            }
        )
    )
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mrtk.cli", "run", str(config), "--out", str(work_dir / "runs"), "-q"], check=True
    )
    print(f"3. mrtk run, 2 iterations on {DEV}: {time.perf_counter() - t0:.1f} s")
    run = max((work_dir / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    for sql in (
        "select stage, status, round(seconds, 2) as s from stages order by started_at",
        "select (select count(*) from responses) responses, (select count(score) from judgements) judged, "
        "(select count(*) from meta_judgements) meta, (select count(*) from pairs) pairs",
    ):
        subprocess.run([sys.executable, "-m", "mrtk.cli", "query", sql, "--run", str(run)], check=True)

    bf16 = EmbeddedBackend(*load_model(model_dir, "bfloat16", DEV))
    reqs = [Request(prompts[i % 3], (i,)) for i in range(64)]
    bf16.generate(reqs, SamplingParams(0.8, 0.95, 128))  # untimed first pass: CUDA picks kernels per new KV length
    sync()
    t0 = time.perf_counter()
    gens = bf16.generate(reqs, SamplingParams(0.8, 0.95, 128))
    sync()
    ours = sum(g.n_tokens for [g] in gens) / (time.perf_counter() - t0)
    ids = [bf16.encode(r.prompt) for r in reqs]
    hf_generate(model, bf16.pad_id, ids, 128)  # the same untimed first pass
    sync()
    t0 = time.perf_counter()
    n = hf_generate(model, bf16.pad_id, ids, 128)
    sync()
    base = n / (time.perf_counter() - t0)
    print(
        f"4. actor batch 64 x 128 on {DEV} (tiny model): embedded bf16 {ours:.0f} tok/s, HF generate fp32 {base:.0f} tok/s, ratio {ours / base:.2f}x"
    )
    print("OK")


if __name__ == "__main__":
    main(*sys.argv[1:3])
