"""Each synthetic lesson reaches the course's result with its shipped config (run through the CLI, on CPU)."""

from __future__ import annotations

import pytest
import torch

from .helpers import logged, metric, predict, run


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # checkpoints/ and lightning_logs/ land in a scratch folder


@pytest.mark.slow
def test_regression_generalises_the_line_to_unseen_points() -> None:
    cli = run("fit", "regression")
    predictions = predict(cli, [[6.0], [7.0], [10.0]]).squeeze(1)
    assert predictions.tolist() == pytest.approx([13.0, 15.0, 21.0], abs=0.05)


@pytest.mark.slow
def test_activation_lets_the_same_network_fit_a_curve() -> None:
    with_relu = metric(run("fit", "activations", "--model.init_args.activation", "relu"), "val/mse")
    straight = metric(run("fit", "activations", "--model.init_args.activation", "none"), "val/mse")
    assert with_relu * 10 <= straight
    assert straight > 0.3  # a line cannot follow x² on [-2, 2]


def test_classifier_separates_the_blobs_and_classifies_the_course_points() -> None:
    cli = run("fit", "classifier")
    cli.trainer.validate(cli.model, dataloaders=cli.datamodule.train_dataloader(), verbose=False)
    assert metric(cli, "val/acc") == 1.0  # training accuracy, measured in eval mode
    probabilities = predict(cli, [[2.0, 2.0], [6.0, 6.0], [1.5, 1.8], [5.5, 6.2]])
    assert (probabilities > 0.5).long().tolist() == [0, 1, 0, 1]
    assert probabilities[0] < 0.01 and probabilities[1] > 0.99


def test_overfit_memorises_noise_but_stays_near_chance_on_new_samples() -> None:
    cli = run("fit", "overfit")
    cli.trainer.validate(cli.model, dataloaders=cli.datamodule.train_dataloader(), verbose=False)
    assert metric(cli, "val/acc") == 1.0
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert 0.35 <= metric(cli, "test/acc") <= 0.65


@pytest.mark.parametrize("dropout", ["0.5", "0.0"])
def test_a_real_pattern_generalises_with_and_without_dropout(dropout: str) -> None:
    cli = run("fit", "dropout", "--model.init_args.dropout", dropout)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    assert metric(cli, "test/acc") >= 0.95


def test_step_lr_halves_the_rate_every_two_epochs() -> None:
    cli = run("fit", "step_lr")
    assert logged(cli, "lr-Adam") == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    # the course prints the LR after each scheduler step: one step ahead of the one in effect
    assert cli.model.optimizers().param_groups[0]["lr"] == pytest.approx(0.0125)


def test_plateau_keeps_the_rate_while_the_loss_falls_fast_and_halves_as_it_flattens(capsys) -> None:
    cli = run(
        "fit", "plateau", "--trainer.enable_progress_bar", "true",
        "--progress_bar", "gpu_lessons.progress.EpochLines", "--progress_bar.init_args.interval", "0",
    )
    losses = logged(cli, "train/loss")
    assert losses[-1] < losses[0] / 100
    assert logged(cli, "lr-Adam") == pytest.approx([0.1] * 14 + [0.05] * 3 + [0.025] * 3)
    # each epoch's line shows the rate it trained with, as the course prints it
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.rsplit("train/lr ", 1)[1] for line in lines] == ["0.1"] * 14 + ["0.05"] * 3 + ["0.025"] * 3
    assert logged(cli, "train/lr") == logged(cli, "lr-Adam")


def test_plateau_halves_the_rate_after_patience_epochs_without_improvement() -> None:
    # An LR this small cannot move the loss: every epoch after the first is a plateau epoch.
    cli = run(
        "fit", "plateau",
        "--model.init_args.optimizer.init_args.lr", "1e-12",
        "--trainer.max_epochs", "8",
    )
    lrs = logged(cli, "lr-Adam")
    # epoch 1 sets the best loss; epochs 2-4 do not improve -> after epoch 4 (> patience 2) the LR halves
    assert lrs == pytest.approx([1e-12] * 4 + [5e-13] * 3 + [2.5e-13], rel=1e-6)


def test_plateau_watches_the_monitor_it_is_given() -> None:
    cli = run("fit", "plateau", "--model.init_args.monitor", "val/loss", "--trainer.max_epochs", "2")
    assert cli.trainer.lr_scheduler_configs[0].monitor == "val/loss"


def test_plateau_on_a_validation_metric_that_is_not_there_every_epoch_is_one_clear_error(capsys) -> None:
    # validation every 2nd epoch: the scheduler steps every epoch and finds no val/loss after the first
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "plateau", "--model.init_args.monitor", "val/loss", "--trainer.check_val_every_n_epoch", "2")
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "error:" in err and "val/loss" in err and "Traceback" not in err


def test_non_finite_weights_are_never_saved() -> None:
    import lightning as L

    from gpu_lessons.callbacks import FiniteLossGuard
    from gpu_lessons.errors import NonFiniteLossError
    from gpu_lessons.models import RegressionLesson

    lesson = RegressionLesson()
    state = lesson.state_dict()
    state["net.layer2.bias"] = torch.tensor([float("inf")])
    with pytest.raises(NonFiniteLossError, match="net.layer2.bias"):
        FiniteLossGuard().on_save_checkpoint(L.Trainer(logger=False), lesson, {"state_dict": state})
