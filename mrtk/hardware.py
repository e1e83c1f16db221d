"""What this machine computes fast: the dtype of the generation copy, and torch's threads.

bf16 runs 1.6-2x faster than fp32 on CPUs with bf16 hardware (AMX, AVX512-BF16) and ~35x
slower on CPUs without it (AVX2 only, most laptops and many cloud VMs), where oneDNN emulates
it. `runtime.inference_dtype: auto` therefore asks the hardware (oneDNN's bf16 flag) and backs
the answer with a measurement: a few milliseconds of both dtypes at the embedded model's matmul
shape (64x576 @ 576x1536). The flag alone is not enough: `ONEDNN_MAX_CPU_ISA=AVX2` caps oneDNN
at AVX2 while the CPU still reports the bf16 instructions. The measurement is cached per
machine (CPU model, torch version, ISA caps, threads) in `<mrtk cache>/hardware.json`.

`MRTK_CPU_BF16=0|1` forces the capability answer (for tests, and for a CPU that misreports).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import sys
import time
import uuid

from mrtk.models import cache_dir

SHAPE = (64, 576, 1536)  # a batch of 64 rows through SmolLM2-135M's MLP up-projection
BF16_MIN_SPEEDUP = 1.2  # below this bf16 is not worth its rounding


def apply_threads(threads: int | None) -> None:
    """`runtime.threads`: torch's intra-op threads (oversubscribed threads on a busy 2-core
    machine ran ~10x slower than one thread per process)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def release_memory() -> None:
    """Collect garbage and hand freed memory back: heap pages to the OS (glibc keeps them
    otherwise, so the resident size would add up stage after stage instead of peaking at the
    largest stage) and PyTorch's cached GPU blocks (a resumed SGLang server on the same GPU needs them)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def cpu_bf16_capable() -> bool:
    forced = os.environ.get("MRTK_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    import torch

    return bool(
        getattr(torch.backends, "mkldnn", None)
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def inference_dtype(choice: str, device: str) -> tuple[str, str]:
    """(dtype, reason) for the generation copy: `choice` unless it is `auto`."""
    if choice != "auto":
        return choice, "runtime.inference_dtype in the config"
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_bf16_supported():
            return "bfloat16", "CUDA device with bf16 support"
        return "float32", "CUDA device without bf16 support"
    if not cpu_bf16_capable():
        forced = " (MRTK_CPU_BF16=0)" if os.environ.get("MRTK_CPU_BF16") == "0" else ""
        return "float32", f"CPU without bf16 hardware (no AMX or AVX512-BF16){forced}"
    if os.environ.get("MRTK_CPU_BF16") == "1":
        return "bfloat16", "CPU with bf16 hardware (MRTK_CPU_BF16=1)"
    speed = measured_matmul()
    ratio = speed["bfloat16"] / speed["float32"]
    where = f"{SHAPE[0]}x{SHAPE[1]} @ {SHAPE[1]}x{SHAPE[2]}: bf16 {speed['bfloat16']:.0f}, fp32 {speed['float32']:.0f} GFLOP/s"
    if ratio >= BF16_MIN_SPEEDUP:
        return "bfloat16", f"CPU with bf16 hardware, measured {ratio:.1f}x fp32 ({where})"
    return "float32", f"CPU reports bf16 but it measured {ratio:.2f}x fp32 ({where}): emulated or capped"


def measured_matmul() -> dict[str, float]:
    """GFLOP/s of both dtypes at SHAPE on this machine, measured once and cached."""
    import torch

    key = "|".join(
        [
            _cpu_name(),
            torch.__version__,
            f"threads={torch.get_num_threads()}",
            *(
                f"{v}={os.environ.get(v, '')}"
                for v in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA")
            ),
        ]
    )
    path = cache_dir() / "hardware.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), dict):
        return cached[key]
    result = {dtype: _gflops(getattr(torch, dtype)) for dtype in ("float32", "bfloat16")}
    cached = cached if isinstance(cached, dict) else {}
    cached[key] = result
    try:  # temp file + rename: two processes measuring at once never leave half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(cached, indent=1), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs the measurement next time
    return result


def _gflops(dtype, budget_s: float = 0.02) -> float:
    """Matmul GFLOP/s at SHAPE: one warm-up call, then calls until `budget_s` has passed (at
    least one, so an emulated bf16 at 0.4 GFLOP/s costs ~0.3 s once)."""
    import torch

    m, k, n = SHAPE
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    torch.mm(a, b)
    calls, t0 = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= budget_s:
            return 2 * m * k * n * calls / elapsed / 1e9


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
