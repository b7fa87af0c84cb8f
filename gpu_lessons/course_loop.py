"""The course's step-7 training loop in plain PyTorch (importing this imports torch alone), run beside each lesson
by ``gpu-lessons course`` and timed by ``benchmarks/lesson_speed.py``."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau


def course_loop(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    steps: int,
    scheduler: Optional[object] = None,
    steps_per_epoch: int = 1,
    print_every: int = 0,
) -> float:
    """``steps`` full-batch steps on ``X``, ``y``; the last loss. A scheduler steps every ``steps_per_epoch`` steps
    (on the loss for ``ReduceLROnPlateau``); ``print_every`` prints the loss and learning rate."""
    model.train()
    for step in range(steps):
        prediction = model(X)  # 1. forward pass: make a prediction
        loss = loss_fn(prediction, y)  # 2. calculate the loss: how wrong are we?
        optimizer.zero_grad()  # 3. zero the gradients of the previous step
        loss.backward()  # 4. backward pass: figure out blame
        optimizer.step()  # 5. update the weights
        if scheduler is not None and (step + 1) % steps_per_epoch == 0:
            scheduler.step(loss.item()) if isinstance(scheduler, ReduceLROnPlateau) else scheduler.step()
        if print_every and step % print_every == 0:
            print(f"Epoch {step:4d} | Loss: {loss.item():.4f} | LR: {optimizer.param_groups[0]['lr']:.6f}")
    return loss.item()
