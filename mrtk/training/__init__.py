"""Training: what turns rows into the next model. `dpo.py` makes DPO examples from the kept pairs and
trains them with LoRA (merged after): through `packed_dpo.py`, mrtk's own DPO step, where it applies,
else TRL's DPOTrainer; `sft.py` is the optional EFT/SFT step before the loop;
`recipe.py` is what the two trainers share (arguments, LoRA, bf16 decisions, callbacks);
`worker.py` runs a DPO step in process or under `accelerate launch` (`-m mrtk.training.worker SPEC`);
`adapters.py` stacks the iterations' LoRAs into one adapter M1 -> M_t for servers that load adapters."""
