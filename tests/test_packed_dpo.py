"""mrtk's own DPO step (training/packed_dpo.py) against TRL's DPOTrainer on the same pairs, the same
adapter and the same schedule: the same split of each pair, the same losses, metrics and optimizer
steps; the packed row gives each side the log-probs of its own unpacked sequence; and where the
step does not apply, the config says so."""

import copy
from pathlib import Path

import pytest
import torch

from mrtk.config import TrainCfg
from mrtk.models import load_for_training
from mrtk.training import packed_dpo, recipe


def pairs(n: int = 4) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": f"Question {i}: what is {i} plus {3 * i}? Explain briefly."}],
            "chosen": [{"role": "assistant", "content": f"It is {4 * i}. Adding {i} and {3 * i} gives that."}],
            "rejected": [{"role": "assistant", "content": "No idea" + " really" * i}],
        }
        for i in range(n)
    ]


def adapter(model_dir: str, cfg: TrainCfg):
    from peft import get_peft_model

    model, tok = load_for_training(model_dir, "cpu")
    torch.manual_seed(0)
    return get_peft_model(model, recipe.lora_config(cfg.lora)), tok


def trl_steps(peft_model, tok, examples, cfg: TrainCfg, *, micro: int, bf16: bool, tmp: Path):
    """TRL's DPOTrainer on the PEFT model, as train_dpo configures it (the smoothing through
    dpo.smoothed_losses); returns (its per-step metric rows, its tokenized dataset)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from mrtk.training.dpo import smoothed_losses

    types, weights, e = smoothed_losses(["sigmoid"], cfg.label_smoothing)
    args = DPOConfig(
        **recipe.trainer_args(
            work_dir=tmp,
            micro_batch_size=micro,
            batch_size=cfg.batch_size,
            epochs=cfg.epochs[0],
            lr=cfg.lr,
            seed=0,
            device="cpu",
            bf16=bf16,
        ),
        beta=cfg.beta,
        lr_scheduler_type=cfg.scheduler,
        loss_type=types,
        loss_weights=weights,
        label_smoothing=e,
    )
    trainer = recipe.quiet(DPOTrainer)(
        model=peft_model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tok
    )
    rows: list[dict] = []
    trainer.add_callback(recipe.metrics_callback(rows, 1))
    trainer.train()
    return rows, trainer.train_dataset


@pytest.mark.parametrize(
    "smoothing, bf16, tol",
    [(0.0, False, 1e-4), (0.3, False, 1e-4), (0.0, True, 2e-2)],
    ids=["fp32", "fp32-label-smoothing", "bf16-autocast"],
)
def test_losses_and_steps_equal_trls(tiny_model_dir, tmp_path, smoothing, bf16, tol):
    """Three optimizer steps, each over all four pairs (so the order the two sides shuffle in does not
    matter), TRL at 4 pairs a pass and mrtk at 2 with accumulation: every step's loss, reward margin,
    gradient norm and learning rate, and the adapter's weights after, agree."""
    cfg = TrainCfg(
        batch_size=4, micro_batch_size=2, epochs=[3], lr=1e-3, label_smoothing=smoothing, lora={"r": 8, "alpha": 16}
    )
    theirs_model, tok = adapter(tiny_model_dir, cfg)
    ours_model = copy.deepcopy(theirs_model)
    start = {n: p.detach().clone() for n, p in theirs_model.named_parameters() if p.requires_grad}
    theirs, dataset = trl_steps(theirs_model, tok, pairs(), cfg, micro=4, bf16=bf16, tmp=tmp_path)
    ours = packed_dpo.fit(ours_model, tok, pairs(), cfg, iteration=1, seed=0, device="cpu", bf16=bf16)

    for ex, row in zip(pairs(), dataset):  # the prompt / completion split, token for token
        assert packed_dpo.split_pair(tok, ex) == (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"])
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == [1, 2, 3]
    for key in ("loss", "reward_margin", "reward_accuracy", "logp_chosen", "grad_norm", "learning_rate"):
        got, want = [r[key] for r in ours], [r[key] for r in theirs]
        assert got == pytest.approx(want, rel=tol, abs=tol), key
    assert ours[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference at step 1
    assert ours[2]["loss"] < ours[0]["loss"] - 0.01  # it learnt, on both sides
    # the adapter's movement: the same within 0.1% in fp32; in bf16 Adam's first steps (about lr x the
    # gradient's sign) flip on tiny components, and mrtk's CPU step runs eager attention where TRL runs
    # sdpa, so the two moves differ by about 11% (measured); a wrong gradient would differ by 100% or more
    theirs_moved = torch.cat([(p - start[n]).flatten() for n, p in theirs_model.named_parameters() if n in start])
    ours_moved = torch.cat([(p - start[n]).flatten() for n, p in ours_model.named_parameters() if n in start])
    assert ((ours_moved - theirs_moved).norm() / theirs_moved.norm()).item() < (1e-3 if not bf16 else 0.25)


def test_a_packed_row_gives_each_side_its_own_sequences_log_probs(tiny_model_dir):
    """Two pairs of different lengths in one packed batch: each side's log-probs equal those of a plain
    forward of prompt + that side alone, so the rejected tokens never saw the chosen ones and the
    padding changed nothing."""
    cfg = TrainCfg(lora={"r": 8, "alpha": 16})
    model, tok = adapter(tiny_model_dir, cfg)
    with torch.no_grad():  # a non-zero adapter, so the check covers it
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.eval()
    triples = [packed_dpo.split_pair(tok, ex) for ex in pairs(3)[1:]]
    with torch.no_grad():
        chosen, rejected = packed_dpo.pair_logps(model, packed_dpo.packed_batch(triples, tok.pad_token_id), "cpu")
        for b, (p, c, r) in enumerate(triples):
            for side, got in ((c, chosen[b]), (r, rejected[b])):
                logits = model(input_ids=torch.tensor([p + side])).logits[0, len(p) - 1 : -1]
                want = torch.log_softmax(logits, -1).gather(1, torch.tensor(side)[:, None]).sum()
                assert got.item() == pytest.approx(want.item(), abs=1e-4)


@pytest.mark.parametrize(
    "change, why",
    [
        ({"lora": None}, "train.lora is null"),
        ({"loss_type": ["sigmoid", "sft"]}, "sigmoid loss alone"),
        ({"num_processes": 2}, "one process"),
        ({"report_to": ["tensorboard"]}, "trackers"),
        ({"precompute_ref_log_probs": False}, "once, before training"),
    ],
)
def test_the_own_step_is_refused_where_it_does_not_apply(change, why):
    assert not TrainCfg(**change).own_step  # auto: TRL there
    with pytest.raises(ValueError, match=f"train.trainer mrtk cannot train this: .*{why}.*set train.trainer: trl"):
        TrainCfg(trainer="mrtk", **change)
    assert TrainCfg().own_step and not TrainCfg(trainer="trl").own_step


def test_train_dpo_through_the_own_step_merges_and_reports(tiny_model_dir, tmp_path):
    from mrtk.training.dpo import planned_steps, train_dpo

    cfg = TrainCfg(batch_size=2, micro_batch_size=1, epochs=[2], lr=1e-3, lora={"r": 4, "alpha": 8})
    examples = [dict(ex, pair_id=f"p{i}", kind="actor") for i, ex in enumerate(pairs(3))]
    steps = []
    merged, _, metrics, stats = train_dpo(
        tiny_model_dir,
        examples,
        cfg,
        iteration=1,
        seed=0,
        device="cpu",
        work_dir=tmp_path,
        on_step=lambda: steps.append(1),
    )
    assert stats["trainer"] == "mrtk" and stats["pairs_trained"] == 3
    assert stats["steps"] == len(metrics) == len(steps) == planned_steps(3, cfg, 1) == 4
    assert [m["epoch"] for m in metrics] == [0.5, 1.0, 1.5, 2.0]
    assert not hasattr(merged, "peft_config")  # a plain model, the adapter folded in
    assert all(m["loss"] is not None and m["reward_margin"] is not None for m in metrics)
