"""mrtk: the Meta-Rewarding toolkit (actor, judge, meta-judge, LoRA DPO, iteration after iteration)."""

__version__ = "0.1.0"
