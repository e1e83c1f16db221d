"""Builds data/probe_human.jsonl, the human-labelled probe set shipped with mrtk (data/README.md).

200 pairs, each field (question, answer 1, answer 2) at most 2,000 characters so that a probe
stays cheap on the embedded CPU model:
- every such pair of the LLMBar dev split (LLMBar Natural + Adversarial, MIT; its MT-Bench-human
  part from lmsys/mt_bench_human_judgments, CC-BY 4.0): 97 pairs;
- the rest from PandaLM's human test set (Apache-2.0): pairs all three annotators label the
  same way (no ties), a seeded sample.
Usage: python scripts/make_probe_set.py [SHARED_DATA_DIR]  (default ../shared/data)
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

TOTAL, MAX_CHARS, SEED = 200, 2000, 0


def text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def main(shared: Path) -> None:
    dev = shared / "judge_dev"
    out = []
    for line in (dev / "llmbar_and_mtbench_human_dev.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if max(len(r["input"]), len(r["output_1"]), len(r["output_2"])) <= MAX_CHARS:
            source = "mt_bench_human (CC-BY-4.0) via LLMBar" if r["subset"] == "MT-Bench-human" else "LLMBar (MIT)"
            out.append(
                {
                    "id": f"llmbar/{r['id']}",
                    "source": source,
                    "subset": r["subset"],
                    "input": r["input"],
                    "output_1": r["output_1"],
                    "output_2": r["output_2"],
                    "label": int(r["label"]),
                }
            )
    panda = []
    for r in json.loads((dev / "pandalm_testset-v1.json").read_text(encoding="utf-8")):
        votes = {r["annotator1"], r["annotator2"], r["annotator3"]}
        question = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        a, b = text(r["response1"]), text(r["response2"])
        if len(votes) == 1 and votes <= {1, 2} and max(len(question), len(a), len(b)) <= MAX_CHARS:
            panda.append(
                {
                    "id": f"pandalm/{r['idx']}",
                    "source": "PandaLM testset-v1 (Apache-2.0), unanimous",
                    "subset": "PandaLM",
                    "input": question,
                    "output_1": a,
                    "output_2": b,
                    "label": votes.pop(),
                }
            )
    out += random.Random(SEED).sample(panda, TOTAL - len(out))
    target = Path(__file__).resolve().parents[1] / "data" / "probe_human.jsonl"
    target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
    print(f"{target}: {len(out)} pairs")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data")
