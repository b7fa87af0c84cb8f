"""The LightningModule every lesson shares: one step, per-stage metrics, the best-so-far metric, optimizers.

The criterion, metric and predictions differ per task (:mod:`gpu_lessons.models.tasks`); a lesson subclasses one.
"""

from __future__ import annotations

import io
import os
from typing import Any, Callable, ClassVar, Optional

import lightning
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR, ReduceLROnPlateau
from torchmetrics import MeanMetric, Metric

from gpu_lessons.safe_checkpoints import checked_hyperparameters, load_checkpoint
from gpu_lessons.errors import CheckpointError, UserError


def batch_inputs(batch: Any) -> Tensor:
    """The inputs of a batch that is either a tensor or an ``(inputs, ...)`` tuple or list."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class Lesson(LightningModule):
    """One of the course's plain networks (``net``; logits for classification) and the training logic lessons share.

    Subclass a task (:class:`~gpu_lessons.models.tasks.RegressionTask`, ``BinaryTask``, ``MulticlassTask``): it gives
    the ``criterion``, the training metric, the ``eval_metric`` factory and the ``best_metric``. ``optimizer`` and
    ``scheduler`` are factories (OneCycleLR and CyclicLR step every batch, others every epoch); ``monitor`` is the
    metric ReduceLROnPlateau watches.
    """

    metric_name: ClassVar[str]  # logged as "train/<name>", "val/<name>", "val/<name>_best"

    def __init__(
        self,
        net: nn.Module,
        criterion: nn.Module,
        train_metric: Metric,
        eval_metric: Callable[[], Metric],
        best_metric: Metric,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: Optional[LRSchedulerCallable] = None,
        monitor: str = "val/loss",
    ) -> None:
        super().__init__()
        # Only plain values are hyperparameters, so every checkpoint loads with weights_only=True.
        self.save_hyperparameters(ignore=["net", "criterion", "train_metric", "eval_metric", "best_metric", "optimizer", "scheduler"])
        self.net = net
        self.criterion = criterion
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.monitor = monitor
        if monitor not in self.metric_names:
            raise ValueError(f"monitor {monitor!r} is not a metric this lesson logs; choose one of {', '.join(self.metric_names)}")
        try:  # a bad lr fails now, before any data or trainer exists
            optimizer([nn.Parameter(torch.zeros(1))])
        except (ValueError, TypeError) as error:
            raise UserError(f"invalid optimizer arguments: {error}") from None
        # A NaN loss stays in the epoch's mean ("warn" would drop it after a host sync); FiniteLossGuard stops on it.
        self.train_loss = MeanMetric(nan_strategy="disable")  # "disable" needs torchmetrics >= 1.6.2
        self.train_metric = train_metric
        self.train_step_outputs: list[tuple[Tensor, Tensor, Tensor]] = []  # this epoch's, for its metrics at its end
        self.val_metric = eval_metric()
        self.test_metric = eval_metric()
        self.val_metric_best = best_metric

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, **kwargs: Any) -> "Lesson":
        """Lightning's ``load_from_checkpoint`` with ``weights_only=True`` and only plain hyperparameters, else a
        :class:`~gpu_lessons.errors.CheckpointError`: nothing in the file chooses code. On ``Lesson``, it builds the
        (imported) class the checkpoint names; ``kwargs`` override the hyperparameters."""
        weights_only = kwargs.pop("weights_only", None)
        if not isinstance(checkpoint_path, (str, os.PathLike)):
            raise CheckpointError(f"load_from_checkpoint takes a file path, got {type(checkpoint_path).__name__}")
        checkpoint = load_checkpoint(checkpoint_path, weights_only=weights_only)
        return cls.from_checkpoint(checkpoint, checkpoint_path, map_location, **kwargs)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: dict[str, Any], source: object = "the checkpoint", map_location: Any = None, **kwargs: Any
    ) -> "Lesson":
        """:meth:`load_from_checkpoint` for a checkpoint already read; ``source`` names it in errors."""
        if kwargs.get("hparams_file") is not None:
            raise CheckpointError("hparams_file is not supported: pass the hyperparameters as keyword arguments")
        lesson_class, hparams = checked_hyperparameters(checkpoint, cls, source)
        if lesson_class is Lesson:
            raise CheckpointError(
                f"{source} does not record its lesson class (it was saved from Python, not by the CLI): "
                "load it with its lesson, e.g. CNNLesson.load_from_checkpoint(...) (the export: --lesson CNNLesson)"
            )
        # Lightning reads a new file of only these: no other entry (legacy "hparams", ...) reaches the constructor.
        state = checkpoint["state_dict"]
        version = str(checkpoint.get("pytorch-lightning_version", lightning.__version__))
        checked = io.BytesIO()
        torch.save({"state_dict": state, "hyper_parameters": hparams, "pytorch-lightning_version": version}, checked)
        checked.seek(0)
        loader = super(Lesson, lesson_class).load_from_checkpoint
        try:
            return loader(checked, map_location=map_location, weights_only=True, **kwargs)
        except (TypeError, AttributeError, ValueError) as error:  # the class cannot be built from these values
            raise CheckpointError(f"{source}: cannot build a {lesson_class.__name__} from it ({error})") from None
        except RuntimeError as error:  # from load_state_dict: these weights are another network's
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = "; ".join(lines[1:3]) or lines[0]  # the first line only says "Error(s) in loading state_dict"
            raise CheckpointError(f"{source} does not hold a {lesson_class.__name__}'s weights ({reason})") from None

    @property
    def metric_names(self) -> tuple[str, ...]:
        """What this lesson logs, so what a checkpoint or ReduceLROnPlateau can monitor."""
        name = self.metric_name
        return ("train/loss", f"train/{name}", "val/loss", f"val/{name}", f"val/{name}_best")

    def forward(self, x: Tensor) -> Tensor:
        """The plain network's output: values for regression, logits for classification."""
        return self.net(x)

    def predictions(self, outputs: Tensor) -> Tensor:
        """What a user reads off the network's outputs (values, probabilities); each task says."""
        raise NotImplementedError

    def model_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The step shared by train/val/test: the loss, what the metric compares with the targets, the targets."""
        inputs, targets = batch
        outputs = self(inputs)  # 1. forward pass: prediction = model(X)
        loss = self.loss(outputs, targets)  # 2. loss: loss = loss_fn(prediction, y)
        return loss, outputs.detach(), targets

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The course's ``loss_fn(prediction, y)``: the criterion on the network's outputs."""
        return self.criterion(outputs, targets)

    def on_train_start(self) -> None:
        """Forget what the sanity check put into the validation metrics."""
        self.val_metric.reset()
        self.val_metric_best.reset()

    def on_train_epoch_start(self) -> None:
        """Start the epoch's outputs afresh (a fit stopped part-way may have left some)."""
        self.train_step_outputs.clear()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One pass of the course's training loop (step 7)::

            prediction = model(X)              # 1. forward pass  } model_step
            loss = loss_fn(prediction, y)      # 2. loss          }
            optimizer.zero_grad()              # 3.               } Lightning, on the loss returned here
            loss.backward()                    # 4. backward pass }
            optimizer.step()                   # 5. update        }

        The outputs stay on the device for the epoch's metrics: a per-step log costs more than a small model's step."""
        loss, preds, targets = self.model_step(batch)
        self.train_step_outputs.append((loss.detach(), preds, targets))
        return loss

    def on_train_epoch_end(self) -> None:
        """Log the epoch's mean training loss and metric, each from one update of the epoch's outputs."""
        if self.train_step_outputs:
            losses, preds, targets = zip(*self.train_step_outputs)
            self.train_step_outputs.clear()
            self.train_loss.update(torch.stack(losses))
            self.train_metric.update(torch.cat(preds), torch.cat(targets))
        self.log("train/loss", self.train_loss, prog_bar=True)
        self.log(f"train/{self.metric_name}", self.train_metric, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate the validation loss and metric."""
        loss, preds, targets = self.model_step(batch)
        self.val_metric.update(preds, targets)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"val/{self.metric_name}", self.val_metric, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        """Log the best validation metric seen so far in this run."""
        self.val_metric_best(self.val_metric.compute())
        self.log(f"val/{self.metric_name}_best", self.val_metric_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Accumulate the test loss and metric; returns what the metric compared (for callbacks' pictures)."""
        loss, preds, targets = self.model_step(batch)
        self.test_metric.update(preds, targets)
        self.log("test/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"test/{self.metric_name}", self.test_metric, on_step=False, on_epoch=True)
        return preds

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Predictions for a batch of inputs (a tensor, or an ``(inputs, targets)`` pair)."""
        return self.predictions(self(batch_inputs(batch)))

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: Callable[[], int]) -> Any:
        """The configured LR scheduler; a OneCycleLR from a config (a partial) that leaves its length open gets
        ``total_steps()``."""
        given = getattr(self.scheduler_factory, "keywords", None) or {}
        if "total_steps" in given and given["total_steps"] is None and given.get("epochs") is None:
            return self.scheduler_factory(optimizer, total_steps=total_steps())
        return self.scheduler_factory(optimizer)

    def configure_optimizers(self) -> Any:
        """The injected optimizer and, if any, the scheduler with the interval and monitor it needs."""
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        try:
            scheduler = self.build_scheduler(optimizer, lambda: int(self.trainer.estimated_stepping_batches))
        except (ValueError, TypeError) as error:  # torch's own words for settings it refuses
            raise UserError(f"the scheduler cannot be built: {error}") from None
        per_step = isinstance(scheduler, (OneCycleLR, CyclicLR))  # built to move the lr every step
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "step" if per_step else "epoch"}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = self.monitor
        return {"optimizer": optimizer, "lr_scheduler": config}
