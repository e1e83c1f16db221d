"""The embedded backend on the real SmolLM2-135M: greedy parity with HF, seeds, stops, programs."""

from __future__ import annotations

import pytest
import torch

from mrtk.backends.base import Request, SamplingParams
from mrtk.backends.embedded import EmbeddedBackend, sample_tokens
from mrtk.models import load_model

PROMPTS = ["Explain why the sky is blue.", "Give me three tips for better sleep.", "What is 2+2?"]


@pytest.fixture(scope="module")
def fp32(model_dir):
    model, tok = load_model(model_dir, "float32")
    return EmbeddedBackend(model, tok, max_batch_rows=16)


def test_greedy_matches_hf_generate(fp32):
    for prompt in PROMPTS:
        [[g]] = fp32.generate([Request(prompt, (0,))], SamplingParams(0.0, 1.0, 24))
        ids = torch.tensor([fp32.encode(prompt)])
        ref = fp32.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
        assert g.text == fp32.tok.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)


def test_the_kv_cache_goes_by_the_name_forward_takes(fp32):
    """transformers 5.2x renamed forward's `past_key_values` to `cache`; the old name warns, and
    from 5.40 would be dropped unread (decode steps without context). No deprecation warning
    from a generation and a structured program, and the cache still carries the context."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        [[g]] = fp32.generate(
            [Request(PROMPTS[0], (0,))],
            SamplingParams(0.0, 1.0, 12),
            suffix="\nScore: ",
            choices={str(d): str(d) for d in range(6)},
        )
    assert g.choice_probs and g.n_tokens == 12


def test_seeds_make_samples_reproducible(fp32):
    params = SamplingParams(0.8, 0.95, 16)
    a = fp32.generate([Request(PROMPTS[0], (11, 12, 13))], params)[0]
    b = fp32.generate([Request(PROMPTS[0], (11, 12, 13))], params)[0]
    assert [g.text for g in a] == [g.text for g in b]
    assert len({g.text for g in a}) > 1  # different seeds, different samples


def test_batches_keep_request_order(fp32):
    reqs = [Request(p, (1,)) for p in PROMPTS]
    out = fp32.generate(reqs, SamplingParams(0.0, 1.0, 8))
    for req, [g] in zip(reqs, out):
        [[alone]] = fp32.generate([req], SamplingParams(0.0, 1.0, 8))
        assert g.text == alone.text  # left padding does not change what a row generates


def test_stop_strings_cut_the_text(fp32):
    [[full]] = fp32.generate([Request(PROMPTS[0], (0,))], SamplingParams(0.0, 1.0, 32))
    word = full.text.split()[4]
    [[cut]] = fp32.generate([Request(PROMPTS[0], (0,))], SamplingParams(0.0, 1.0, 32, stop=(word,)))
    assert cut.finish == "stop" and word not in cut.text
    assert full.text.startswith(cut.text) and len(cut.text) < full.text.index(word) + 1


def test_structured_program_reads_choice_probabilities(fp32):
    [[g]] = fp32.generate(
        [Request("Rate this answer: 'Paris is the capital of France.'", (5,))],
        SamplingParams(0.8, 0.95, 8),
        suffix="\nScore: ",
        choices={str(d): str(d) for d in range(6)},
    )
    assert set(g.choice_probs) == {"0", "1", "2", "3", "4", "5"}
    assert all(0.0 <= p <= 1.0 for p in g.choice_probs.values())
    assert 0.1 < sum(g.choice_probs.values()) <= 1.0 + 1e-6


def test_top_k_window_sampling_equals_full_top_p():
    """Same uniform draws: sampling inside the top-k window picks exactly what full top-p would."""
    torch.manual_seed(0)
    logits = torch.randn(64, 1000) * 4
    gens = [torch.Generator().manual_seed(i) for i in range(64)]
    ours = sample_tokens(logits, gens, 0.8, 0.9)
    # reference: full-vocabulary nucleus with the same per-row uniform numbers
    probs = (logits / 0.8).softmax(-1)
    p, idx = probs.sort(-1, descending=True)
    p = torch.where(p.cumsum(-1) - p < 0.9, p, torch.zeros_like(p))
    u = torch.stack([torch.rand((), generator=torch.Generator().manual_seed(i)) for i in range(64)])
    cdf = p.cumsum(-1)
    ref = idx.gather(-1, torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp(max=999)).squeeze(-1)
    assert torch.equal(ours, ref)


def test_sampling_falls_back_to_full_vocabulary_when_the_window_is_short():
    """Flat logits: the top-50 window holds ~5% of the mass, so top-p=0.9 must reach beyond it."""
    logits = torch.zeros(8, 1000)
    gens = [torch.Generator().manual_seed(i) for i in range(8)]
    picks = sample_tokens(logits, gens, 1.0, 0.9)
    window = logits.softmax(-1).topk(50, dim=-1).indices
    # with ~900 equally likely candidates, 8 draws all inside the 50-token window has probability ~(1/18)^8
    assert any(int(t) not in set(w.tolist()) for t, w in zip(picks, window))


def test_two_token_choices_split_the_shared_first_token(fp32):
    """A 1-10 scale: "10" is two tokens ("1", "0") for SmolLM2. P(1) + P(10) must equal the one-token
    P(1) of a 0-5 program on the same text, and P(10) = P("1") * P("0" | "1") from a plain forward pass."""
    req = [Request("Rate this answer from 1 to 10: 'Paris is the capital of France.'", (5,))]
    params = SamplingParams(0.0, 1.0, 6)
    [[g5]] = fp32.generate(req, params, suffix="\nScore: ", choices={str(d): str(d) for d in range(6)})
    [[g10]] = fp32.generate(req, params, suffix="\nScore: ", choices={str(d): str(d) for d in range(1, 11)})
    assert g5.text == g10.text
    p5, p10 = g5.choice_probs, g10.choice_probs
    assert p10["1"] + p10["10"] == pytest.approx(p5["1"], rel=1e-4)
    assert p10["2"] == pytest.approx(p5["2"], rel=1e-4)
    one, zero = (
        fp32.tok("1", add_special_tokens=False)["input_ids"][0],
        fp32.tok("0", add_special_tokens=False)["input_ids"][0],
    )
    ids = fp32.encode(req[0].prompt) + fp32.tok(g10.text + "\nScore: ", add_special_tokens=False)["input_ids"] + [one]
    with torch.no_grad():
        p_next = fp32.model(torch.tensor([ids])).logits[0, -1].softmax(-1)
    assert p10["10"] == pytest.approx(p5["1"] * p_next[zero].item(), rel=1e-3)


def test_windowed_sampling_equals_full_top_p_at_vocabulary_size():
    """A 49k vocabulary with peaked, medium and flat rows, so each of the three windows (top-50,
    the wider one, the whole sorted vocabulary) decides some rows: every pick equals full top-p."""
    torch.manual_seed(1)
    vocab, rows = 49152, 24
    logits = torch.randn(rows, vocab)
    logits[:8] *= 8.0  # peaked: the top-50 holds the nucleus
    logits[8:16, :600] += 9.0  # ~600 strong candidates: beyond 50, inside the wide window (1024)
    logits[16:] *= 0.3  # nearly flat: the nucleus spans most of the vocabulary (and has no tied probabilities)
    gens = [torch.Generator().manual_seed(i) for i in range(rows)]
    ours = sample_tokens(logits, gens, 1.0, 0.95)
    # the sampler's probabilities, exp(logit - logsumexp), are the softmax's (to float rounding); the
    # reference sorts them over the whole vocabulary, so only the windowing differs between the two
    probs = (logits - logits.logsumexp(-1, keepdim=True)).exp()
    assert torch.allclose(probs, logits.softmax(-1), rtol=1e-5, atol=0)
    p, idx = probs.sort(-1, descending=True)
    kept = torch.where(p.cumsum(-1) - p < 0.95, p, torch.zeros_like(p))
    assert (kept > 0).sum(-1)[:8].max() <= 50 < (kept > 0).sum(-1)[8:16].min() <= 1024 < (kept > 0).sum(-1)[16:].min()
    u = torch.stack([torch.rand((), generator=torch.Generator().manual_seed(i)) for i in range(rows)])
    cdf = kept.cumsum(-1)
    ref = idx.gather(-1, torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp(max=vocab - 1)).squeeze(-1)
    assert torch.equal(ours, ref)


def test_shared_prefix_is_found_and_left_alone_when_short():
    from mrtk.backends.embedded import MIN_SHARED_PREFIX, shared_prefix_len

    base = list(range(100, 140))
    assert shared_prefix_len([base + [1, 2], base + [3]]) == 40
    assert shared_prefix_len([base, base]) == 39  # each row keeps its last token
    assert shared_prefix_len([base[: MIN_SHARED_PREFIX - 1] + [1, 2], base[: MIN_SHARED_PREFIX - 1] + [3, 4]]) == 0
    assert shared_prefix_len([base]) == 0


JUDGED = [
    "The sky looks blue because air scatters short wavelengths more.",
    "Sleep at fixed hours, avoid screens, keep it cool.",
    "4",
    "Paris is the capital of France.",
    "Blue light bends.",
    "Drink coffee late at night.",
    "5",
    "I don't know.",
]


def _judge_inputs():
    from mrtk.config import validate_config
    from mrtk.prompts import load_template

    cfg = validate_config({}).judge.model_copy(update={"max_new_tokens": 12})
    responses = [{"response_id": f"r{i}", "prompt_id": f"p{i % 3}", "text": t} for i, t in enumerate(JUDGED)]
    return cfg, load_template(cfg.template, role="judge"), responses, {f"p{i}": q for i, q in enumerate(PROMPTS)}


def test_shared_prefix_judge_stage_equals_the_plain_path_in_fp32(tiny_model_dir):
    """The whole judge stage (justification, N=3, score) with the system + rubric prefix
    prefilled once for the batch vs every prompt prefilled whole: in fp32 the same text and the
    same scores, so the shared path's masks and positions are exact (greedy here: on a random
    model's near-flat logits a sampled pick can flip on float rounding alone). Exactness holds on any
    weights, so the 2-layer random model with SmolLM2's tokenizer runs it (18 s on the real model
    capped at AVX2), on all eight answers (three prompts' worth, padded to different lengths)."""
    from mrtk.backends.embedded import shared_prefix_len
    from mrtk.prompts import judge_prompt
    from mrtk.stages.judge import run_judge

    cfg, template, responses, questions = _judge_inputs()
    cfg = cfg.model_copy(
        update={"temperature": 0.0}
    )  # a random model's logits are near-flat: a sampled pick can flip on rounding alone
    model, tok = load_model(tiny_model_dir, "float32")
    fp32 = EmbeddedBackend(model, tok, max_batch_rows=16)
    plain_be = EmbeddedBackend(model, tok, max_batch_rows=64, share_prefix=False)
    encoded = [fp32.encode(judge_prompt(template, questions[r["prompt_id"]], r["text"])) for r in responses]
    assert shared_prefix_len(encoded) > 200  # the rubric really is shared
    shared = run_judge(fp32, responses, questions, cfg, template, iteration=1, run_seed=3, model_version="M0")
    plain = run_judge(plain_be, responses, questions, cfg, template, iteration=1, run_seed=3, model_version="M0")
    assert len(shared) == 3 * len(responses) and all(r["score"] is not None for r in shared)
    assert [r["raw_text"] for r in shared] == [r["raw_text"] for r in plain]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(shared, plain)) < 1e-4


def _bf16_score_spread(model_dir: str) -> float:
    """The structured judge's score program on the bf16 copy, shared-prefix path against the plain
    one, on the eight answers: the largest difference in expected score."""
    from mrtk.parse import expected_score
    from mrtk.programs import SCORE_SUFFIX, score_choices
    from mrtk.prompts import judge_prompt

    cfg, template, responses, questions = _judge_inputs()
    model, tok = load_model(model_dir, "bfloat16")
    reqs = [Request(judge_prompt(template, questions[r["prompt_id"]], r["text"]), (0,)) for r in responses]
    scores = []
    for share in (True, False):
        be = EmbeddedBackend(model, tok, max_batch_rows=64, share_prefix=share)
        out = be.generate(reqs, SamplingParams(0.0, 1.0, 0), suffix=SCORE_SUFFIX, choices=score_choices(template))
        scores.append([expected_score(g.choice_probs).value for [g] in out])
    assert all(s is not None for s in scores[0] + scores[1])
    assert len(set(scores[1])) > 1  # the answers score differently: a constant would agree with anything
    return max(abs(a - b) for a, b in zip(*scores))


def test_shared_prefix_judge_scores_stay_within_bf16_tolerance_on_a_tiny_model(tiny_model_dir):
    """bf16 is what this is about, so it runs in bf16, on a 2-layer random model (seconds where
    bf16 is emulated): the two paths round differently (differently shaped matmuls), and the score
    program on the same text must still agree within bf16 tolerance, 0.1 of a point on 0-5."""
    assert _bf16_score_spread(tiny_model_dir) <= 0.1


@pytest.mark.slow
def test_shared_prefix_judge_scores_stay_within_bf16_tolerance(model_dir):
    """The same on the real model (measured: max 0.066 shared vs plain, 0.026 plain bf16 vs fp32, on
    these eight). Slow, and only where a run generates in bf16 (`inference_dtype: auto`): on a CPU
    without bf16 hardware no run takes this path, and emulated bf16 made it 250 s (issue 31); the
    tiny-model variant above runs everywhere."""
    from mrtk.hardware import inference_dtype

    dtype, why = inference_dtype("auto", "cpu")
    if dtype != "bfloat16":
        pytest.skip(f"no run generates in bf16 here: {why}")
    assert _bf16_score_spread(model_dir) <= 0.1
