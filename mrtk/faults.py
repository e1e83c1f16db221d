"""Crash points for the fault-injection tests (tests/test_faults.py).

`MRTK_FAULT=name:n` makes the process SIGKILL itself the n-th time it passes the point
`name`, exactly as an out-of-memory kill or a pulled plug would stop it. `MRTK_FAULT_LOG=FILE`
appends each point passed to FILE, so a test can count the points of an uninterrupted run
and pick where to kill. With neither set (every normal run) a point is one dict lookup.

Points: db.commit (inside a transaction, its rows written, before COMMIT), generate.batch
(after each backend batch), train.step (after each optimizer step), train.merge (LoRA merged
in memory), save_model (weights written to the temporary directory, before the rename).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_passed: Counter = Counter()


def point(name: str) -> None:
    spec, log = os.environ.get("MRTK_FAULT"), os.environ.get("MRTK_FAULT_LOG")
    if spec is None and log is None:
        return
    _passed[name] += 1
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(name + "\n")
    if spec:
        want, _, n = spec.partition(":")
        if want == name and _passed[name] == int(n or 1):
            os.kill(os.getpid(), signal.SIGKILL)
