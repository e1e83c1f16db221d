"""The prompt pool file: validated whole, errors name the line."""

import pytest

from mrtk.data import load_pool, prompts_for_iteration, resolve_data_file
from mrtk.errors import MrtkError


def test_shipped_pool():
    pool = load_pool(resolve_data_file("train_prompts.jsonl"))
    assert len(pool) >= 48 and len({p["prompt_id"] for p in pool}) == len(pool)


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"prompt": "a"}\n{not json}\n', "line 2 is not valid JSON"),
        (b'{"prompt": "a"}\n{"prompt": "  "}\n', "line 2 has an empty prompt"),
        (b'{"prompt": "a"}\n{"prompt": "a"}\n', "line 2 repeats the prompt of line 1"),
        (b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n', "line 2 is not UTF-8"),
        (b'{"question": "a"}\n', "line 1 has no string field 'prompt'"),
        (b'["a"]\n', "line 1 must be a JSON object"),
        (b"\n\n", "holds no prompts"),
    ],
)
def test_bad_pools(tmp_path, content, message):
    p = tmp_path / "p.jsonl"
    p.write_bytes(content)
    with pytest.raises(MrtkError, match=message):
        load_pool(p)


def test_iterations_take_different_prompts():
    pool = [{"prompt_id": str(i), "text": str(i)} for i in range(10)]
    it1 = prompts_for_iteration(pool, 4, 1, seed=0)
    it2 = prompts_for_iteration(pool, 4, 2, seed=0)
    assert len(it1) == len(it2) == 4 and not {p["prompt_id"] for p in it1} & {p["prompt_id"] for p in it2}
    assert prompts_for_iteration(pool, 4, 1, seed=0) == it1
