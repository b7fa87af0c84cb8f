"""Everything the package has to prove on a GPU, in one command, in under 8 minutes on one GPU:

    python benchmarks/gpu_check.py [--data_dir DIR]

1. ``tests/test_gpu.py``: each MNIST lesson's fit and test on ``cuda`` with its config (on the real MNIST in
   ``DIR/MNIST/raw`` when given, with the course's accuracy floors; else on small IDX files), bf16-mixed, the NaN
   guard's accelerator interval, an exact resume on one GPU and the doctor's race;
2. with ``--data_dir``, ``benchmarks/mnist_speed.py --device cuda --repeats 1``: the GPU speed table (the course's
   loop, the plain loop, a bare Trainer and ``gpu_lessons fit``, for the MLP and the CNN);
3. ``gpu-lessons doctor``.

It prints each part's output and the time it took, and exits 0 only if every part passed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def part(title: str, command: list[str], env: dict[str, str]) -> bool:
    print(f"\n## {title}\n\n$ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env)
    print(f"({time.perf_counter() - started:.0f} s, exit code {result.returncode})", flush=True)
    return result.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", type=Path, help="folder that holds MNIST/raw (real MNIST: accuracy floors, speed)")
    args = parser.parse_args()
    import torch

    from gpu_lessons.cuda import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    if reason is not None:
        print(f"error: no GPU check without a usable GPU: {reason}", file=sys.stderr)
        return 1
    print(f"# GPU check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    env = {**os.environ, "GPU_LESSONS_GPU_TESTS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if args.data_dir is not None:
        env["GPU_LESSONS_MNIST_DIR"] = str(args.data_dir.resolve())
    started = time.perf_counter()
    passed = part("GPU tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"], env)
    if args.data_dir is not None:
        speed = [sys.executable, "benchmarks/mnist_speed.py", "--device", "cuda", "--repeats", "1", "--data_dir", str(args.data_dir)]
        passed &= part("MNIST speed on the GPU", speed, env)
    passed &= part("doctor", [sys.executable, "-m", "gpu_lessons", "doctor"], env)
    print(f"\n{'all passed' if passed else 'FAILED'} in {time.perf_counter() - started:.0f} s")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
