"""The course's training loop (its step 7), in plain PyTorch and nothing else: forward pass, loss, zero_grad, backward,
step. ``gpu-lessons course`` runs it beside each lesson (:mod:`gpu_lessons.course`); ``benchmarks/lesson_speed.py`` times
it as the course's script (importing this imports torch alone)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

LossFn = Callable[[Tensor, Tensor], Tensor]


def course_loop(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    steps: int,
    scheduler: Optional[object] = None,
    steps_per_epoch: int = 1,
    print_every: int = 0,
) -> float:
    """The course's training loop: ``steps`` full-batch steps on ``X``, ``y``; the last loss.

    A scheduler steps once per epoch of ``steps_per_epoch`` steps (the course's epochs are single steps), on the
    loss for ``ReduceLROnPlateau``. ``print_every`` prints the loss (and learning rate) every that many steps.
    """
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
