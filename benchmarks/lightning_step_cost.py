"""What Lightning's training loop costs per step by itself: the floor under any lesson's overhead.

    python benchmarks/lightning_step_cost.py [--steps 2000] [--repeats 3]

Trains a one-layer model (4 → 1, batch 4, SGD) whose arithmetic is negligible, once with a hand-written loop, once
with a bare ``Trainer`` (no logger, checkpoints, progress bar, summary or sanity check) and once with the same
``Trainer`` and ten callbacks that do nothing, and prints the microseconds per step of each: the cost of Lightning's
hook calls and bookkeeping, which a lesson pays on top of its own step, and what each callback adds to every step
just by being there (Lightning calls each of its hooks through the profiler, overridden or not). Runs on the CPU,
without the NVML-based GPU check that ``import lightning`` switches on (it would slow the hand-written loop too).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterator

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn


class SameBatch:
    """``steps`` times the same tiny batch, with a length (as the package's own batches have)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.batch = (torch.randn(4, 4), torch.randn(4, 1))

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for _ in range(self.steps):
            yield self.batch


class TinyRegression(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        return nn.functional.mse_loss(self.layer(inputs), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def by_hand(steps: int) -> float:
    model = TinyRegression()
    optimizer = model.configure_optimizers()
    start = time.perf_counter()
    for batch in SameBatch(steps):
        loss = model.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


class DoesNothing(Callback):
    pass


def with_trainer(steps: int, callbacks: int = 0) -> float:
    trainer = Trainer(
        callbacks=[DoesNothing() for _ in range(callbacks)],
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(TinyRegression(), train_dataloaders=SameBatch(steps))
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # keep the table free of Trainer's info lines
    # gpu_lessons.callbacks.NVML_CHECK_VARIABLE: set by `import lightning`, it slows every optimizer step on the CPU
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    print(f"CPU, {torch.get_num_threads()} threads; torch {torch.__version__}\n")
    print("| run | by hand µs/step | Trainer µs/step | Lightning's cost µs/step | with 10 callbacks µs/step | per callback µs/step |")
    print("|---|---|---|---|---|---|")
    for run in range(1, args.repeats + 1):
        hand, lightning, callbacks = by_hand(args.steps), with_trainer(args.steps), with_trainer(args.steps, callbacks=10)
        print(
            f"| {run} | {hand * 1e6:.0f} | {lightning * 1e6:.0f} | {(lightning - hand) * 1e6:.0f} | {callbacks * 1e6:.0f} "
            f"| {(callbacks - lightning) * 1e5:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
