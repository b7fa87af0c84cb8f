"""``gpu-lessons doctor``: the course's first checks in one report (the torch build, the GPUs or why there are
none, the CPU-vs-GPU matrix multiply race, autograd's d/dx (x³ + 5) at x = 4). A machine without a GPU passes."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Optional, Union

import torch

from gpu_lessons.cuda import cuda_unavailable_reason
from gpu_lessons.errors import EXIT_FAILED, CommandParser, positive_int, run_command


def environment_report() -> list[str]:
    """The torch and Python versions, and the CUDA and cuDNN versions this torch build was made with."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return [
        f"torch {torch.__version__}",
        f"Python {platform.python_version()}",
        f"CUDA build: {torch.version.cuda or 'none (a CPU-only torch build)'}",
        f"cuDNN: {cudnn or 'none'}",
    ]


def gpu_report() -> list[str]:
    """One line per GPU torch can use: name, memory and compute capability; or why there is none and the fix."""
    reason = cuda_unavailable_reason()
    if reason is not None:
        lines = [f"no usable GPU: {reason}"]
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and torch.version.cuda is not None:
            lines.append(f"CUDA_VISIBLE_DEVICES is set to {visible!r} in this shell")
        lines.append("the lessons still run, on the CPU (the CLI falls back by itself)")
        return lines
    gpus = [torch.cuda.get_device_properties(index) for index in range(torch.cuda.device_count())]
    return [f"{len(gpus)} GPU(s)"] + [
        f"cuda:{index} {gpu.name}, {gpu.total_memory / 2**30:.1f} GiB, compute capability {gpu.major}.{gpu.minor}"
        for index, gpu in enumerate(gpus)
    ]


def time_matmul(device: Union[str, torch.device], size: int, repeats: int) -> float:
    """Median seconds of one ``size``×``size`` float32 matrix multiply on ``device``, after one untimed warm-up."""
    device = torch.device(device)
    # CUDA kernels run asynchronously: without waiting, the clock would stop before the GPU has finished.
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    a, b = torch.rand(2, size, size, device=device)
    a @ b  # the first call pays for the CUDA context, cuBLAS handles and kernel selection
    sync()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def matmul_report(size: int, repeats: int) -> list[str]:
    """The course's CPU-vs-GPU race on one ``size``×``size`` matrix multiply; the GPU half only where CUDA works."""
    flop = 2 * size**3

    def timing(name: str, seconds: float) -> str:
        return f"{name}: {seconds * 1e3:.2f} ms ({flop / seconds / 1e9:,.0f} GFLOP/s)"

    cpu = time_matmul("cpu", size, repeats)
    lines = [
        f"{size}×{size} float32, median of {repeats} after a warm-up",
        timing(f"CPU ({torch.get_num_threads()} threads)", cpu),
    ]
    if not torch.cuda.is_available():
        return [*lines, "GPU: skipped, no usable GPU (see above)"]
    gpu = time_matmul("cuda", size, repeats)
    return [*lines, timing(f"GPU ({torch.cuda.get_device_name()})", gpu), f"speed-up: {cpu / gpu:.1f}× on the GPU"]


def autograd_derivative(device: Union[str, torch.device] = "cpu") -> float:
    """d/dx (x³ + 5) at x = 4, by autograd on ``device``."""
    x = torch.tensor(4.0, device=device, requires_grad=True)
    (x**3 + 5).backward()
    assert x.grad is not None
    return x.grad.item()


def autograd_report() -> tuple[list[str], bool]:
    """Autograd's derivative on the CPU (and the GPU, where usable) against calculus' 3x² = 48; lines and pass."""
    expected, lines, passed = 3 * 4.0**2, [], True
    for device in ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]:
        got = autograd_derivative(device)
        passed &= got == expected
        verdict = "ok" if got == expected else "FAILED"
        lines.append(f"{device}: d/dx (x³ + 5) at x = 4 is {got:g}, calculus says {expected:g}: {verdict}")
    return lines, passed


MAX_SIZE = 16384  # three float32 matrices of 16384² are 3 GiB, on the CPU and the GPU alike


def _matrix_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_SIZE:
        gib = 3 * 4 * value**2 / 2**30
        raise argparse.ArgumentTypeError(f"at most {MAX_SIZE} (three {value}×{value} matrices need {gib:,.0f} GiB)")
    return value


def _print_section(title: str, lines: list[str]) -> None:
    print(title, *(f"  {line}" for line in lines), sep="\n")


def main(argv: Optional[list[str]] = None, prog: str = "gpu-lessons doctor") -> int:
    """Print the report; exit code 0 if every check that could run passed, else 1 (:mod:`gpu_lessons.errors`)."""
    parser = CommandParser(prog=prog, description="Is this machine ready for the course, and how fast is its GPU?")
    parser.add_argument(
        "--size", type=_matrix_size, default=4096, help=f"N of the N×N matrices (default 4096, at most {MAX_SIZE})"
    )
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed runs, median reported (default 5)")

    def doctor() -> int:
        args = parser.parse_args(argv)
        _print_section("Environment", environment_report())
        _print_section("GPU", gpu_report())
        _print_section("Matrix multiply", matmul_report(args.size, args.repeats))
        autograd_lines, passed = autograd_report()
        _print_section("Autograd", autograd_lines)
        return 0 if passed else EXIT_FAILED

    return run_command(doctor)


if __name__ == "__main__":
    raise SystemExit(main())
