"""CREAM's ranking consistency and the label smoothing it gives DPO (train.consistency: avg, issue 25)."""

import pytest

from mrtk.errors import MrtkError

from mrtk.stages.consistency import kendall_tau_b, label_smoothing, ordinal_ranks, prompt_consistency, summary


def test_kendall_tau_b_hand_computed():
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4], [40, 30, 20, 10]) == -1.0
    # one swap of four: 5 concordant, 1 discordant -> 4/6
    assert kendall_tau_b([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    # a tie in x: pairs (1,2) tied in x only; tau_b = (C - D) / sqrt((C+D+Tx)(C+D+Ty)) = (5 - 0) / sqrt(6 * 5)
    assert kendall_tau_b([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / (6 * 5) ** 0.5)
    assert kendall_tau_b([2, 2, 2], [1, 2, 3]) is None  # a constant ranking ranks nothing


def test_identical_rankings_give_no_smoothing_and_reversed_ones_one():
    """issue 25's hand case: two identical rankings -> label_smoothing 0; two reversed -> 1 - 0 = 1
    (CREAM's code, unclamped), 0.5 with train.consistency_clamp."""
    prompt_of = {"r0": "p", "r1": "p", "r2": "p", "s0": "q", "s1": "q"}
    now = {"r0": 4.0, "r1": 3.0, "r2": 1.0, "s0": 2.0, "s1": 5.0}
    same = prompt_consistency(now, dict(now), prompt_of)
    assert same == {"p": 1.0, "q": 1.0} and label_smoothing(list(same.values())) == 0.0
    reversed_ = prompt_consistency(now, {k: -v for k, v in now.items()}, prompt_of)
    assert reversed_ == {"p": 0.0, "q": 0.0} and label_smoothing(list(reversed_.values())) == 1.0
    assert label_smoothing(list(reversed_.values()), clamp=True) == 0.5
    half = prompt_consistency(now, {"r0": 4.0, "r1": 3.0, "r2": 1.0, "s0": 5.0, "s1": 2.0}, prompt_of)
    assert label_smoothing(list(half.values())) == pytest.approx(0.5)  # mean c = (1 + 0) / 2
    assert label_smoothing([]) == 0.0


def test_prompts_without_two_ranked_responses_are_left_out():
    prompt_of = {"r0": "p", "r1": "p", "t0": "t", "u0": "u", "u1": "u"}
    now = {"r0": 1.0, "r1": 2.0, "t0": 3.0, "u0": 2.0, "u1": 2.0}
    before = {"r0": 1.0, "r1": 3.0, "t0": 1.0, "u0": 1.0, "u1": 4.0}
    assert prompt_consistency(now, before, prompt_of, "tau_b") == {"p": 1.0}  # t: one response; u: M_t ties them
    # ordinal (CREAM's code): M_t's tie ranks by position (u0 before u1), as does M_{t-1} -> concordant
    assert prompt_consistency(now, before, prompt_of) == {"p": 1.0, "u": 1.0}
    numbers = summary({"p": 1.0, "q": 0.5})
    mean, lo, hi, n = numbers["consistency"]
    assert (mean, n) == (0.75, 2) and lo < mean < hi and numbers["label_smoothing"] == (0.25, None, None, 2)


def test_ordinal_ties_reproduce_creams_case():
    """issue 34's hand case, 5-point scores: M_t ties the first two responses, M_{t-1} orders them
    against position. CREAM's code (rankdata ordinal, then kendalltau of the ranks) breaks the tie by
    position into a discordant pair: tau = (5 - 1) / 6, c = 0.833; tau-b keeps the tie: 5 / sqrt(5 * 6),
    c = 0.956."""
    prompt_of = {f"r{i}": "p" for i in range(4)}
    now = {"r0": 3.0, "r1": 3.0, "r2": 4.0, "r3": 5.0}
    before = {"r0": 2.0, "r1": 1.0, "r2": 3.0, "r3": 4.0}
    assert ordinal_ranks([3.0, 3.0, 4.0, 5.0]) == [1, 2, 3, 4] and ordinal_ranks([2, 1, 3, 4]) == [2, 1, 3, 4]
    assert prompt_consistency(now, before, prompt_of)["p"] == pytest.approx(5 / 6)
    assert round(prompt_consistency(now, before, prompt_of)["p"], 3) == 0.833
    assert round(prompt_consistency(now, before, prompt_of, "tau_b")["p"], 3) == 0.956
    assert ordinal_ranks([2.0, 2.0, 2.0]) == [1, 2, 3]  # a constant list still ranks (by position)


def test_unclamped_e_above_half_is_the_reversed_pair():
    """CREAM trains c L(chosen, rejected) + (1 - c) L(rejected, chosen) for any c; with e = 1 - c above
    0.5 mrtk hands TRL the reversed pairs with 1 - e, which is the same loss (checked on margins)."""
    import torch
    import torch.nn.functional as F

    from mrtk.training.dpo import oriented_pairs

    ex = [{"prompt": "p", "chosen": "good", "rejected": "bad"}]
    assert oriented_pairs(ex, 0.3) == ([{"prompt": "p", "chosen": "good", "rejected": "bad"}], 0.3, False)
    rows, e2, rev = oriented_pairs(ex, 0.54)
    assert rows == [{"prompt": "p", "chosen": "bad", "rejected": "good"}] and rev and e2 == pytest.approx(0.46)
    d = torch.linspace(-20, 20, 41)  # beta x (log-ratio of chosen - log-ratio of rejected)

    def loss(margin, e):
        return (1 - e) * -F.logsigmoid(margin) + e * -F.logsigmoid(-margin)

    assert torch.allclose(loss(d, 0.54), loss(-d, e2), atol=1e-6)


def test_the_first_round_re_ranks_with_the_model_before_sft(tmp_path):
    """CREAM regularises iteration 1 too, against the model before SFT: with sft.file set the consistency
    stage of iteration 1 re-judges with M0, the base model; without SFT (or with first_round skip)
    iteration 1 has no earlier model and trains unregularised."""
    from mrtk.config import load_config
    from mrtk.models import resolve_model
    from mrtk.runs import model_for, new_run

    sft = tmp_path / "eft.jsonl"
    sft.write_text('{"prompt": "p", "completion": "c"}\n')
    cfg = load_config("default", ["train.consistency=avg", f"sft.file={sft}"])
    assert [cfg.consistency_model(t) for t in (1, 2, 3)] == ["M0", "M1", "M2"]
    store = new_run(cfg, "default", tmp_path / "runs")
    assert model_for(store, cfg, "M0") == resolve_model(cfg.model)
    skip = load_config("default", ["train.consistency=avg", f"sft.file={sft}", "train.consistency_first_round=skip"])
    assert [skip.consistency_model(t) for t in (1, 2)] == [None, "M1"]
    plain = load_config("default", ["train.consistency=avg"])
    assert [plain.consistency_model(t) for t in (1, 2)] == [None, "M1"]
    with pytest.raises(MrtkError, match="M0: the model before SFT"):
        model_for(store, plain, "M0")
    assert load_config("default", []).consistency_model(2) is None
