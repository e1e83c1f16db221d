"""The generation dtype per machine: bf16 only where the hardware runs it natively."""

import pytest

from mrtk import hardware


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MRTK_CACHE", str(tmp_path))
    monkeypatch.delenv("MRTK_CPU_BF16", raising=False)
    return tmp_path


def test_no_bf16_hardware_means_fp32(cache, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_capable", lambda: False)
    monkeypatch.setattr(hardware, "measured_matmul", lambda: pytest.fail("no measurement without the hardware"))
    dtype, why = hardware.inference_dtype("auto", "cpu")
    assert dtype == "float32" and "without bf16 hardware" in why


def test_bf16_hardware_backed_by_measurement(cache, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_capable", lambda: True)
    monkeypatch.setattr(hardware, "measured_matmul", lambda: {"float32": 100.0, "bfloat16": 350.0})
    assert hardware.inference_dtype("auto", "cpu")[0] == "bfloat16"
    # the flag says yes but bf16 is emulated (ONEDNN_MAX_CPU_ISA=AVX2 on a bf16 CPU): fp32
    monkeypatch.setattr(hardware, "measured_matmul", lambda: {"float32": 100.0, "bfloat16": 1.5})
    dtype, why = hardware.inference_dtype("auto", "cpu")
    assert dtype == "float32" and "emulated" in why


def test_explicit_dtype_and_forced_answer(cache, monkeypatch):
    assert hardware.inference_dtype("float32", "cpu") == ("float32", "runtime.inference_dtype in the config")
    monkeypatch.setenv("MRTK_CPU_BF16", "0")
    assert hardware.cpu_bf16_capable() is False and hardware.inference_dtype("auto", "cpu")[0] == "float32"
    monkeypatch.setenv("MRTK_CPU_BF16", "1")
    assert hardware.cpu_bf16_capable() is True and hardware.inference_dtype("auto", "cpu")[0] == "bfloat16"


def test_measurement_is_cached_per_machine(cache):
    first = hardware.measured_matmul()
    assert first["float32"] > 0 and first["bfloat16"] > 0
    assert (cache / "hardware.json").is_file()
    assert hardware.measured_matmul() == first  # read back, not measured again (timings never repeat exactly)
