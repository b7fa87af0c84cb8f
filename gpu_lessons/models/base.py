"""The one LightningModule every lesson shares: step, metrics, logging, optimizers and schedulers."""

from __future__ import annotations

import functools
import io
import os
import random
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, Optional

import lightning
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR, ReduceLROnPlateau
from torchmetrics import MaxMetric, MeanMetric, MeanSquaredError, Metric, MinMetric
from torchmetrics.classification import Accuracy

from gpu_lessons.checkpointing import checked_hyperparameters, load_checkpoint
from gpu_lessons.errors import CheckpointError, NonFiniteLossError, UserError

Task = Literal["regression", "binary", "multiclass"]

# Schedulers that are designed to move the learning rate every optimizer step, not every epoch.
_PER_STEP_SCHEDULERS = (OneCycleLR, CyclicLR)

# On an accelerator, reading the loss back every step would stall the pipeline; the first non-finite step is
# recorded on the device and read back this often (and always before a checkpoint is written).
_FINITE_CHECK_INTERVAL = 32


# Feature vectors up to this long are shown by their values in predictions; longer ones (and images) by their name.
_MAX_SHOWN_FEATURES = 4


class PredictionRow(NamedTuple):
    """One sample's prediction: the line a person reads and the same row's CSV columns."""

    text: str
    values: dict[str, Any]


def batch_inputs(batch: Any) -> Tensor:
    """The inputs of a batch that is either a tensor or an ``(inputs, ...)`` tuple."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _short(value: float) -> float:
    return float(f"{value:.6g}")  # float32 has ~7 significant digits; don't print the rest as noise


def factory_class(factory: Any) -> Optional[type]:
    """The class a factory will build: the factory itself, or the class inside a (jsonargparse) partial."""
    if isinstance(factory, type):
        return factory
    if isinstance(factory, functools.partial):
        return next((a for a in (factory.func, *factory.args) if isinstance(a, type)), None)
    return None


class Lesson(LightningModule):
    """A lesson = one of the course's plain ``nn.Module`` networks plus the training logic they all share.

    Subclasses build their network and call ``super().__init__(net, task=...)``. Everything else lives here
    once: one step for train/val/test, one torchmetrics object per stage, a best-so-far validation metric,
    and optimizer/scheduler wiring from injected factories, so a YAML config can pick any
    ``torch.optim`` optimizer and LR scheduler.

    Args:
        net: The plain PyTorch network. For classification it returns logits (no sigmoid/softmax).
        task: ``regression`` (MSE), ``binary`` (BCE-with-logits, accuracy) or ``multiclass`` (cross-entropy,
            accuracy).
        num_classes: Number of classes for ``multiclass``.
        optimizer: Builds the optimizer from the parameters, e.g. ``torch.optim.Adam`` or a partial with an lr.
        scheduler: Builds an LR scheduler from the optimizer, or ``None``. ReduceLROnPlateau gets ``monitor``
            set automatically; OneCycleLR gets ``total_steps`` from the trainer when not given and, like
            CyclicLR, steps every batch.
        monitor: Metric that ReduceLROnPlateau watches. Falls back to ``train/loss`` when validation does not run
            every epoch. (The CLI's checkpoints watch ``--checkpoint.monitor``, ``val/loss`` by default.)
        label_smoothing: ``multiclass`` only: the cross-entropy's target is ``1 - label_smoothing`` on the true
            class and the rest spread evenly (``nn.CrossEntropyLoss(label_smoothing=...)``); it keeps a short,
            high-learning-rate run from becoming over-confident. ``0`` is plain cross-entropy.
    """

    def __init__(
        self,
        net: nn.Module,
        task: Task,
        num_classes: Optional[int] = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: Optional[LRSchedulerCallable] = None,
        monitor: str = "val/loss",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        # Factories are code, not data: keeping them out of the hyperparameters keeps every checkpoint loadable
        # with ``weights_only=True``; the CLI writes them to the run's config.yaml instead.
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.task = task
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.monitor = monitor
        self._first_nonfinite_step: Optional[Tensor] = None
        self._check_optimizer_arguments()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        if label_smoothing and task != "multiclass":
            raise ValueError(f"label_smoothing is for task='multiclass' (cross-entropy), not task={task!r}")

        if task == "regression":
            self.loss_fn: nn.Module = nn.MSELoss()
            self.metric_name = "mse"
            make_metric = MeanSquaredError
            self.val_metric_best: Metric = MinMetric()
        elif task == "binary":
            self.loss_fn = nn.BCEWithLogitsLoss()
            self.metric_name = "acc"
            make_metric = functools.partial(Accuracy, task="binary")
            self.val_metric_best = MaxMetric()
        elif task == "multiclass":
            if not num_classes or num_classes < 2:
                raise ValueError(f"task='multiclass' needs num_classes >= 2, got {num_classes!r}")
            self.loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
            self.metric_name = "acc"
            make_metric = functools.partial(Accuracy, task="multiclass", num_classes=num_classes)
            self.val_metric_best = MaxMetric()
        else:
            raise ValueError(f"unknown task {task!r}: expected 'regression', 'binary' or 'multiclass'")
        if monitor not in self.metric_names:
            raise ValueError(f"monitor {monitor!r} is not a metric this lesson logs; choose one of {', '.join(self.metric_names)}")
        # One metric object per stage so their states never mix. The training ones update every step, so they skip
        # the accuracy's input checks and the mean's NaN scan: both read values back from a GPU (a host sync per
        # step). A NaN loss is the NaN guard's job, and it then shows in the epoch's mean instead of being dropped.
        # (MeanSquaredError only checks shapes.)
        self.train_metric = make_metric() if task == "regression" else make_metric(validate_args=False)
        self.train_loss = MeanMetric(nan_strategy="disable")  # "disable" needs torchmetrics >= 1.6.2
        self.val_metric = make_metric()
        self.test_metric = make_metric()

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, **kwargs: Any) -> "Lesson":
        """Lightning's ``load_from_checkpoint``, with nothing in the checkpoint able to choose code.

        The file is read once with ``weights_only=True`` (whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says), and its
        hyperparameters must be plain values for the lesson's own arguments
        (:func:`~gpu_lessons.checkpointing.checked_hyperparameters`); anything else is refused with a
        :class:`~gpu_lessons.errors.CheckpointError`. On the base class, ``Lesson.load_from_checkpoint`` builds the
        lesson the checkpoint names when that class is already imported (``from gpu_lessons.models import ...``).
        ``kwargs`` override the checkpoint's hyperparameters and may be anything: they come from your own code.
        """
        if kwargs.pop("weights_only", True) is not True:
            raise CheckpointError("gpu_lessons loads checkpoints with weights_only=True only")
        if not isinstance(checkpoint_path, (str, os.PathLike)):
            raise CheckpointError(f"load_from_checkpoint takes a file path, got {type(checkpoint_path).__name__}")
        return cls.from_checkpoint(load_checkpoint(checkpoint_path), checkpoint_path, map_location, **kwargs)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: dict[str, Any], source: object = "the checkpoint", map_location: Any = None, **kwargs: Any
    ) -> "Lesson":
        """:meth:`load_from_checkpoint` for a checkpoint already read by
        :func:`~gpu_lessons.checkpointing.load_checkpoint` (so a caller that needs more of the file reads it once);
        ``source`` names it in errors."""
        if kwargs.get("hparams_file") is not None:
            raise CheckpointError("hparams_file is not supported: pass the hyperparameters as keyword arguments")
        lesson_class, hparams = checked_hyperparameters(checkpoint, cls, source)
        if lesson_class is Lesson:
            raise CheckpointError(
                f"{source} does not record its lesson class (it was saved from Python, not by the CLI): "
                "load it with its lesson, e.g. CNNLesson.load_from_checkpoint(...) (the export: --lesson CNNLesson)"
            )
        # Lightning builds the lesson from a new file of the weights and the checked hyperparameters only: none of
        # the file's other entries (the legacy "hparams" and "module_arguments" Lightning would also read as
        # constructor arguments, "hparams_name", ...) reaches it.
        checked = io.BytesIO()
        torch.save(
            {
                "state_dict": checkpoint["state_dict"],
                "hyper_parameters": hparams,
                "pytorch-lightning_version": str(checkpoint.get("pytorch-lightning_version", lightning.__version__)),
            },
            checked,
        )
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
        """What this lesson logs, and so what ``checkpoint.monitor`` or ReduceLROnPlateau's ``monitor`` can watch."""
        name = self.metric_name
        return ("train/loss", f"train/{name}", "val/loss", f"val/{name}", f"val/{name}_best")

    def _check_optimizer_arguments(self) -> None:
        """Build the optimizer once on a dummy parameter, so a bad lr fails now, before data and trainer exist."""
        try:
            self.optimizer_factory([nn.Parameter(torch.zeros(1))])
        except (ValueError, TypeError) as error:
            raise UserError(f"invalid optimizer arguments: {error}") from None

    def forward(self, x: Tensor) -> Tensor:
        """The plain network's output: predictions for regression, logits for classification."""
        return self.net(x)

    def predictions(self, outputs: Tensor) -> Tensor:
        """What a user reads off the network: values, P(class 1) per sample (binary) or class probabilities."""
        if self.task == "binary":
            return outputs.squeeze(-1).sigmoid()
        if self.task == "multiclass":
            return outputs.softmax(dim=-1)
        return outputs

    def model_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The step shared by train/val/test: returns the loss, the metric's predictions and the targets."""
        inputs, targets = batch
        outputs = self(inputs)
        if self.task == "binary":
            outputs = outputs.squeeze(-1)
            targets = targets.to(outputs.dtype)
        loss = self.loss_fn(outputs, targets)
        # Binary accuracy gets the predicted class (logit > 0, i.e. probability > 0.5): given floats, torchmetrics
        # would first check whether they are logits or probabilities.
        preds = (outputs > 0 if self.task == "binary" else outputs).detach()
        return loss, preds, targets

    def on_train_start(self) -> None:
        """Forget what the sanity check put into the validation metrics."""
        self.val_metric.reset()
        self.val_metric_best.reset()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One optimisation step. Loss and metric only accumulate on the device here (``update``, no ``self.log``):
        a per-step ``self.log`` costs about a millisecond of Python, more than a small model's whole step on a GPU."""
        loss, preds, targets = self.model_step(batch)
        self._guard_finite(loss, batch_idx)
        self.train_loss.update(loss.detach())
        self.train_metric.update(preds, targets)
        return loss

    def _guard_finite(self, loss: Tensor, batch_idx: int) -> None:
        """Stop at the first non-finite loss, naming the step, instead of training on NaNs."""
        bad = ~torch.isfinite(loss.detach())
        step = self.global_step + 1  # 1-based: the step whose loss this is
        if self.device.type == "cpu":  # reading a CPU value back costs nothing: check every step
            if self._on_any_process(bool(bad)):
                value = f"{loss.item()}" if bad else "NaN or infinite on another process"
                raise NonFiniteLossError(self._nonfinite_message(value, step, batch_idx))
            return
        if self._first_nonfinite_step is None:
            self._first_nonfinite_step = torch.zeros((), dtype=torch.long, device=self.device)
        first = self._first_nonfinite_step
        first.copy_(torch.where(bad & (first == 0), step, first))
        if step % _FINITE_CHECK_INTERVAL == 0:
            self._raise_if_nonfinite_seen()

    def _raise_if_nonfinite_seen(self) -> None:
        step = 0 if self._first_nonfinite_step is None else int(self._first_nonfinite_step)
        if self._on_any_process(step > 0):
            where = "NaN or infinite" if step else "NaN or infinite on another process"
            raise NonFiniteLossError(self._nonfinite_message(where, step or self.global_step, None))

    def _on_any_process(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process: under DDP all ranks must stop together, or the others would wait
        forever in the gradient all-reduce."""
        if self._trainer is None or self._trainer.world_size == 1:
            return flag
        return self._trainer.strategy.reduce_boolean_decision(flag, all=False)

    def _nonfinite_message(self, value: str, step: int, batch_idx: Optional[int]) -> str:
        where = f"step {step} (epoch {self.current_epoch}" + (f", batch {batch_idx})" if batch_idx is not None else ")")
        return (
            f"the training loss became {value} at {where}; training stopped and no checkpoint with non-finite "
            "weights was written. Lower the learning rate or check the data for NaN/inf values."
        )

    def on_train_epoch_end(self) -> None:
        """Log the epoch's mean training loss and metric (after catching a non-finite loss recorded on a GPU).

        Logging the metric objects lets Lightning compute (and sync across processes) and reset them."""
        self._raise_if_nonfinite_seen()
        self.log("train/loss", self.train_loss, prog_bar=True)
        self.log(f"train/{self.metric_name}", self.train_metric, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to save non-finite weights; store the RNG states so a resumed run draws the same dropout masks."""
        self._raise_if_nonfinite_seen()
        for name, tensor in checkpoint["state_dict"].items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise NonFiniteLossError(
                    f"weight {name} became NaN or infinite by step {self.global_step}; no checkpoint was written. "
                    "Lower the learning rate or check the data for NaN/inf values."
                )
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            # This process's device only: under DDP each rank has its own, and only rank zero's is written.
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """When resuming a fit, continue the random streams exactly where the checkpoint left them."""
        states = checkpoint.get("rng_states")
        if states is None or self._trainer is None or self._trainer.state.fn != "fit":
            return  # plain loading (load_from_checkpoint, test, predict) leaves the global RNG alone
        try:
            torch.set_rng_state(states["torch"])
            if states["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(states["cuda"])
            random.setstate(states["python"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"the checkpoint's random-number states are damaged ({type(error).__name__}: {error})") from None

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulates the validation loss and metric."""
        loss, preds, targets = self.model_step(batch)
        self.val_metric.update(preds, targets)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"val/{self.metric_name}", self.val_metric, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        """Logs the best validation metric seen so far in this run."""
        self.val_metric_best(self.val_metric.compute())
        self.log(f"val/{self.metric_name}_best", self.val_metric_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulates the test loss and metric."""
        loss, preds, targets = self.model_step(batch)
        self.test_metric.update(preds, targets)
        self.log("test/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"test/{self.metric_name}", self.test_metric, on_step=False, on_epoch=True)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Predictions for a batch of inputs (a tensor, or an ``(inputs, targets)`` pair)."""
        return self.predictions(self(batch_inputs(batch)))

    def prediction_rows(
        self,
        inputs: Tensor,
        predictions: Tensor,
        names: Sequence[str],
        class_names: Optional[Sequence[str]] = None,
    ) -> list[PredictionRow]:
        """Readable rows for a batch of :meth:`predict_step` results, e.g. ``x = 6 → ŷ = 13.00`` or
        ``point [2.0, 2.0] → class 0 (probability 100.00%)``.

        A sample is shown by its values when it is a short feature vector, otherwise by its entry in ``names``
        (an image's file, ``sample 17``). A class is shown by its entry in ``class_names`` (``digit 7``) when
        given, with the probability of the predicted class.
        """
        predictions = predictions.detach().float().cpu()
        shown = [_describe_input(sample, name) for sample, name in zip(inputs.detach().cpu(), names)]
        if self.task == "regression":
            return [
                PredictionRow(f"{text} → ŷ = {y:.2f}", {**values, "prediction": y})
                for (text, values), y in zip(shown, map(_short, predictions.squeeze(-1).tolist()))
            ]
        if self.task == "binary":
            classes = (predictions > 0.5).long()
            confidences = torch.where(classes == 1, predictions, 1 - predictions)
        else:
            confidences, classes = predictions.max(dim=-1)
        rows = []  # binary or not, what is shown is the network's probability of the class it predicts
        for (text, values), c, p in zip(shown, classes.tolist(), map(_short, confidences.tolist())):
            columns = {**values, "class": c}
            if class_names:
                columns["name"] = class_names[c]
            columns["probability"] = p
            label = class_names[c] if class_names else f"class {c}"
            rows.append(PredictionRow(f"{text} → {label} (probability {p:.2%})", columns))
        return rows

    def configure_optimizers(self) -> Any:
        """Builds the injected optimizer and, if any, the scheduler with the interval and monitor it needs."""
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler_class = factory_class(self.scheduler_factory)
        kwargs = {}
        given = self.scheduler_factory.keywords if isinstance(self.scheduler_factory, functools.partial) else {}
        if scheduler_class is not None and issubclass(scheduler_class, OneCycleLR):
            if given.get("total_steps") is None and given.get("epochs") is None:
                kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, **kwargs)
        config: dict[str, Any] = {
            "scheduler": scheduler,
            "interval": "step" if isinstance(scheduler, _PER_STEP_SCHEDULERS) else "epoch",
        }
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = self._plateau_monitor()
        return {"optimizer": optimizer, "lr_scheduler": config}

    def _plateau_monitor(self) -> str:
        """``self.monitor``, unless it is a validation metric and validation does not run every epoch in this fit
        (the scheduler steps every epoch and would find no value, or a stale one)."""
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        has_val_data = datamodule is None or is_overridden("val_dataloader", datamodule)
        validates = trainer.limit_val_batches != 0 and trainer.check_val_every_n_epoch == 1 and has_val_data
        if self.monitor.startswith("val/") and not validates:
            return self.monitor.replace("val/", "train/", 1)
        return self.monitor


def _describe_input(sample: Tensor, name: str) -> tuple[str, dict[str, Any]]:
    """How a prediction shows its input: ``x = 6``, ``point [2.0, 2.0]``, or the sample's name."""
    if sample.ndim != 1 or len(sample) > _MAX_SHOWN_FEATURES:
        return name, {"input": name}
    values = [_short(v) for v in sample.float().tolist()]
    if len(values) == 1:
        return f"x = {values[0]:g}", {"x": values[0]}
    return f"point {values}", {f"x{i}": v for i, v in enumerate(values, start=1)}
