"""``gpu-lessons doctor``: the report, the no-GPU explanations, the timing and the exit code."""

from __future__ import annotations

import pytest
import torch

from gpu_lessons import doctor
from gpu_lessons.cuda import cuda_unavailable_reason

SMALL = ["--size", "64", "--repeats", "2"]


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same report on a CPU-only CI machine and on a GPU workstation.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_a_machine_without_gpu_passes_and_is_told_why(no_gpu: None, capsys: pytest.CaptureFixture) -> None:
    assert doctor.main(SMALL) == 0
    out = capsys.readouterr().out
    assert f"torch {torch.__version__}" in out
    assert f"no usable GPU: {cuda_unavailable_reason()}" in out
    assert "64×64 float32, median of 2" in out and "GPU: skipped" in out
    assert "d/dx (x³ + 5) at x = 4 is 48, calculus says 48: ok" in out


def test_a_wrong_gradient_fails_the_run(
    no_gpu: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(doctor, "autograd_derivative", lambda device="cpu": 47.0)
    assert doctor.main(SMALL) == 1
    assert "is 47, calculus says 48: FAILED" in capsys.readouterr().out


def test_a_cpu_only_build_is_told_to_install_a_cuda_build(no_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # irrelevant without CUDA, so not reported
    report = "\n".join(doctor.environment_report() + doctor.gpu_report())
    assert "CUDA build: none (a CPU-only torch build)" in report
    assert "no CUDA support" in report and "--index-url https://download.pytorch.org/whl/cu124" in report
    assert "nvidia-smi" not in report and "CUDA_VISIBLE_DEVICES is set" not in report


def test_a_cuda_build_without_a_visible_gpu_is_told_to_check_the_driver(
    no_gpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    report = "\n".join(doctor.environment_report() + doctor.gpu_report())
    assert "CUDA build: 12.4" in report
    assert "built with CUDA 12.4 but sees no GPU" in report and "nvidia-smi" in report
    assert "CUDA_VISIBLE_DEVICES is set to '' in this shell" in report
    assert "install a CUDA build" not in report


def test_time_matmul_times_a_real_multiply() -> None:
    seconds = doctor.time_matmul("cpu", 64, 2)
    assert isinstance(seconds, float) and seconds > 0


def test_time_matmul_reports_the_median_of_the_timed_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 0.3, 1.0, 1.1, 2.0, 2.2])  # start/stop of runs of 0.3, 0.1 and 0.2 s; the warm-up is untimed
    monkeypatch.setattr(doctor.time, "perf_counter", lambda: next(clock))
    assert doctor.time_matmul("cpu", 8, 3) == pytest.approx(0.2)


@pytest.mark.parametrize("option", ["--size", "--repeats"])
def test_sizes_and_repeats_must_be_positive(option: str, capsys: pytest.CaptureFixture) -> None:
    assert doctor.main([option, "0"]) == 2
    assert capsys.readouterr().err == f"error: argument {option}: must be at least 1, got 0 (see gpu-lessons doctor --help)\n"


def test_a_size_beyond_memory_is_refused_before_anything_is_timed(capsys: pytest.CaptureFixture) -> None:
    assert doctor.main(["--size", "200000"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: argument --size: at most 16384 (three 200000×200000")
