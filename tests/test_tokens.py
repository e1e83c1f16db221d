"""PrefixEncoder (issue 33, the client's cost): the ids of a prompt that shares a long start with
earlier ones, reused, must be exactly the whole tokenization's, or reuse is not offered."""

from __future__ import annotations

import json
import random

import pytest

from mrtk.models import PrefixEncoder, tokenizer_for

PIECES = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n",
    "'s",
    "'re",
    "'ll",
    "123",
    "4567",
    "x",
    "é",
    "日本",
    "<|im_end|>",
    "<|im_start|>",
]
PIECES += ["\t", "Ġ", "word", " word", "!!", "'", "end|>", "<|im_", ".</", "  \n", "🙂"]


@pytest.fixture(scope="module")
def tok(model_dir):
    return tokenizer_for(model_dir)


def texts(tok, n: int, seed: int):
    """Chat-rendered prompts that share a long rubric, then differ right after it, or inside the
    margin the encoder keeps before its cut, with characters that move pre-token boundaries."""
    rng = random.Random(seed)
    rubric = "Review the user's question and the response.\n\n- Add 1 point if it's  relevant (12345).\n" * 5
    head = tok.apply_chat_template([{"role": "user", "content": rubric + "User: "}], tokenize=False)
    head = head[: head.rindex("User: ") + 6]
    for _ in range(n):
        base = head[: len(head) - rng.choice([0, 0, 1, 2, 5, 20, 47, 49, 60, 120])]
        yield base + "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 12))) + " and the question?"


def test_reused_prefix_ids_equal_the_whole_tokenization(tok):
    enc = PrefixEncoder(tok, verify_every=10**9)  # no self-check: every comparison is this test's
    assert enc.on, "SmolLM2's byte-level BPE is a supported tokenizer"
    for text in texts(tok, 1500, seed=1):
        assert enc.encode(text) == tok(text, add_special_tokens=False)["input_ids"], repr(text[-80:])
    assert enc.reused > 1000 and enc.prefixes  # the fast path is what was tested


def test_a_wrong_reuse_is_caught_and_turns_reuse_off(tok):
    enc = PrefixEncoder(tok, verify_every=1)
    gen = texts(tok, 5, seed=2)
    first, second = next(gen), next(gen)
    enc.encode(first), enc.encode(second)  # the second learns the shared start
    prefix, cut, ids = enc.prefixes[0]
    enc.prefixes[0] = (prefix, cut, ids[:-1])  # a corrupted entry: one id lost
    third = next(gen)
    assert enc.encode(third) == tok(third, add_special_tokens=False)["input_ids"]
    assert not enc.on and enc.mismatches == 1


@pytest.mark.parametrize(
    "change",
    [
        {"normalizer": {"type": "NFC"}},
        {"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"}},
        {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}},
        {"model": {"type": "Unigram"}},
    ],
)
def test_other_tokenizers_are_not_offered_reuse(tok, change):
    """A normalizer, a SentencePiece-style or prefix-space pre-tokenizer, a non-BPE model, or added
    tokens that strip whitespace break the argument for exactness: plain tokenization there."""
    spec = json.loads(tok.backend_tokenizer.to_str())
    assert PrefixEncoder.supported(spec)
    assert not PrefixEncoder.supported({**spec, **change})
    stripping = [dict(a, rstrip=True) for a in spec["added_tokens"]]
    assert not PrefixEncoder.supported({**spec, "added_tokens": stripping})
