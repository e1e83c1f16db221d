"""`python tests/scripted_run.py [--delay S] CONFIG` (or `--resume RUN_DIR`): what `mrtk run` does (config,
inputs, run row, writer lock, the loop, one-line errors), with the scripted policy and DPO step
of tests/scripted.py (a config with `backend: sglang` keeps the real SGLang client and only
scripts the DPO step). A separate process, so the kill -9 trials and the live-query test of the
fast suite can SIGKILL it and read it from outside, in seconds instead of minutes. `--delay S`:
each generate call takes S seconds more (a model's time), so a run lasts long enough to watch."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scripted import ScriptedPolicy, scripted_train  # noqa: E402

from mrtk.errors import MrtkError  # noqa: E402


def main(argv: list[str]) -> None:
    from mrtk.config import load_config, resolve_config_path
    from mrtk.inputs import check_inputs
    from mrtk.loop import Loop
    from mrtk.runs import WriterLock, find_run, new_run, open_run

    delay = 0.0
    if argv[0] == "--delay":
        delay, argv = float(argv[1]), argv[2:]
    if argv[0] == "--resume":
        store, cfg, config_dir = open_run(find_run(argv[1]))
        inputs = check_inputs(cfg, config_dir)
    else:
        path = resolve_config_path(argv[0])
        cfg = load_config(path, [])
        inputs = check_inputs(cfg, path.parent)
        store = new_run(inputs.cfg, str(path.resolve()), Path("runs"))
    from mrtk.backends import open_policy

    served = (
        inputs.cfg.backend == "sglang"
    )  # the real SGLang client against the servers in the config (tests: mrtk.bench.serving_sim)
    with WriterLock(store.run_dir):
        Loop(
            store,
            inputs,
            open_policy=open_policy if served else ScriptedPolicy(delay=delay).opener,
            train=scripted_train,
        ).run()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except MrtkError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
