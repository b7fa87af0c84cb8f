"""The guarantee callbacks on their own, around a Trainer built in Python (the CLI adds them by default)."""

from __future__ import annotations

import os
import random

import lightning as L
import pytest
import torch

from gpu_lessons.callbacks import NVML_CHECK_VARIABLE, CudaRuntimeCheckOnCpu, FiniteLossGuard, RandomStates
from gpu_lessons.data import LineDataModule, RandomFeaturesDataModule
from gpu_lessons.errors import CheckpointError, NonFiniteLossError
from gpu_lessons.models import DropoutLesson, RegressionLesson

from .conftest import REPO
from .helpers import PoisonWeightsAtStep


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kwargs)


@pytest.mark.parametrize(("interval", "stopped_at"), [(None, 40), (1, 40), (32, 63)])
def test_a_non_finite_loss_is_named_by_its_own_step_on_every_interval(tmp_path, interval, stopped_at) -> None:
    """The accelerator path (interval 32) runs here on the CPU: the step is named exactly, with its value and batch,
    training stops at the next read (step 64, before its update), and nothing is saved."""
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[FiniteLossGuard(interval), PoisonWeightsAtStep(40)])
    with pytest.raises(NonFiniteLossError, match=r"became nan at step 41 \(epoch 0, batch 40\)"):
        trainer.fit(RegressionLesson(), datamodule=LineDataModule(steps_per_epoch=100))
    assert trainer.global_step == stopped_at
    assert not list(tmp_path.rglob("*.ckpt"))


def test_an_epoch_never_ends_with_a_non_finite_step_unreported(tmp_path) -> None:
    # interval 1000 > the run's 30 steps: only the epoch end reads the record
    trainer = _trainer(tmp_path, max_epochs=3, callbacks=[FiniteLossGuard(1000), PoisonWeightsAtStep(5)])
    with pytest.raises(NonFiniteLossError, match="at step 6 "):
        trainer.fit(RegressionLesson(), datamodule=LineDataModule(steps_per_epoch=10))
    assert trainer.global_step == 10 and trainer.current_epoch == 0


def test_a_bad_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="check_every_n_steps must be a positive integer"):
        FiniteLossGuard(0)


def _fit_dropout(tmp_path, epochs: int, ckpt_path=None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    trainer = _trainer(tmp_path, max_epochs=epochs, callbacks=[RandomStates()], num_sanity_val_steps=0)
    lesson = DropoutLesson(dropout=0.5)
    data = RandomFeaturesDataModule(num_features=10, num_train=40, num_val=20, num_test=20, steps_per_epoch=5)
    trainer.fit(lesson, datamodule=data, ckpt_path=ckpt_path)
    return {k: v.clone() for k, v in lesson.state_dict().items()}


def test_a_resumed_fit_draws_the_same_dropout_masks(tmp_path) -> None:
    whole = _fit_dropout(tmp_path / "whole", epochs=4)
    _fit_dropout(tmp_path / "first", epochs=2)
    checkpoint = next((tmp_path / "first").rglob("*.ckpt"))
    random.random(), torch.rand(100)  # the resumed process's generators are elsewhere
    resumed = _fit_dropout(tmp_path / "resumed", epochs=4, ckpt_path=checkpoint)
    for name, tensor in whole.items():
        assert torch.equal(tensor, resumed[name]), name


def test_a_checkpoint_from_before_the_callback_restores_its_states_when_training_starts(tmp_path) -> None:
    old = torch.load(REPO / "tests/fixtures/regression_98c0fa1.ckpt", weights_only=True)
    callback, trainer = RandomStates(), _trainer(tmp_path)
    torch.rand(3)
    callback.on_load_checkpoint(trainer, None, old)
    assert not torch.equal(torch.get_rng_state(), old["rng_states"]["torch"])  # restoring alone (test, predict): no
    callback.on_train_start(trainer, None)
    assert torch.equal(torch.get_rng_state(), old["rng_states"]["torch"])
    assert random.getstate() == old["rng_states"]["python"]


def test_states_restored_for_a_test_never_reach_a_later_fit(tmp_path) -> None:
    callback, trainer = RandomStates(), _trainer(tmp_path)
    callback.load_state_dict(callback.state_dict())
    before = torch.rand(3)
    callback.setup(trainer, None, "fit")  # a new stage
    callback.on_train_start(trainer, None)
    assert not torch.equal(torch.rand(3), before)  # the generator went on; nothing was rewound


def test_damaged_random_states_are_one_clear_error_when_restored(tmp_path) -> None:
    callback = RandomStates()
    with pytest.raises(CheckpointError, match="random-number states are damaged"):
        callback.load_state_dict({"torch": "not a state"})
    assert callback._restored is None  # nothing to apply when training starts


class EnvironmentDuringSteps(L.Callback):
    """What the NVML variable is while training steps run."""

    def __init__(self) -> None:
        self.seen: set = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.add(os.environ.get(NVML_CHECK_VARIABLE))


@pytest.mark.parametrize("with_callback", [True, False])
def test_a_cpu_fit_runs_its_steps_without_the_nvml_check_and_puts_it_back(tmp_path, monkeypatch, with_callback) -> None:
    monkeypatch.setenv(NVML_CHECK_VARIABLE, "1")  # what `import lightning` does
    during = EnvironmentDuringSteps()
    callbacks = [CudaRuntimeCheckOnCpu(), during] if with_callback else [during]
    trainer = _trainer(tmp_path, max_epochs=1, callbacks=callbacks, enable_checkpointing=False)
    trainer.fit(RegressionLesson(), datamodule=LineDataModule(steps_per_epoch=3))
    assert during.seen == ({None} if with_callback else {"1"})
    assert os.environ[NVML_CHECK_VARIABLE] == "1"


def test_the_nvml_check_is_put_back_after_a_failed_fit(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(NVML_CHECK_VARIABLE, "1")
    trainer = _trainer(tmp_path, max_epochs=1, callbacks=[CudaRuntimeCheckOnCpu(), FiniteLossGuard(), PoisonWeightsAtStep(2)])
    with pytest.raises(NonFiniteLossError):
        trainer.fit(RegressionLesson(), datamodule=LineDataModule(steps_per_epoch=5))
    assert os.environ[NVML_CHECK_VARIABLE] == "1"


def test_without_the_variable_nothing_is_set(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(NVML_CHECK_VARIABLE, raising=False)
    trainer = _trainer(tmp_path, max_epochs=1, callbacks=[CudaRuntimeCheckOnCpu()], enable_checkpointing=False)
    trainer.fit(RegressionLesson(), datamodule=LineDataModule(steps_per_epoch=2))
    assert NVML_CHECK_VARIABLE not in os.environ
