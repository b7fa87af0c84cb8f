"""The course's exact architectures: parameter counts, shapes and what each lesson outputs."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gpu_lessons.models import (
    CNN,
    BlobClassifierNet,
    CNNLesson,
    DropoutLesson,
    MLPLesson,
    MNISTNet,
    OverfitNet,
    RegressionLesson,
    SchedulerNet,
    SimpleNet,
)


def num_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("net", "expected", "input_shape", "output_shape"),
    [
        (SimpleNet("none"), 25, (5, 1), (5, 1)),
        (SimpleNet("relu"), 25, (5, 1), (5, 1)),
        (SimpleNet("tanh"), 25, (5, 1), (5, 1)),
        (SimpleNet("sigmoid"), 25, (5, 1), (5, 1)),
        (BlobClassifierNet(), 65, (4, 2), (4, 1)),
        (MNISTNet(), 109_386, (3, 1, 28, 28), (3, 10)),
        (CNN(), 52_138, (3, 1, 28, 28), (3, 10)),
        (OverfitNet(dropout=0.0), 18_049, (7, 10), (7, 1)),
        (OverfitNet(dropout=0.5), 18_049, (7, 10), (7, 1)),
        (SchedulerNet(), 97, (9, 4), (9, 1)),
    ],
)
def test_course_architectures(net: torch.nn.Module, expected: int, input_shape: tuple, output_shape: tuple) -> None:
    assert num_parameters(net) == expected
    assert net(torch.randn(input_shape)).shape == output_shape


def test_cnn_intermediate_shapes_match_the_course() -> None:
    net = CNN()
    x = net.pool(net.relu(net.conv1(torch.zeros(1, 1, 28, 28))))
    assert x.shape == (1, 8, 14, 14)
    x = net.pool(net.relu(net.conv2(x)))
    assert x.shape == (1, 16, 7, 7)


def test_lessons_wrap_the_plain_network_without_extra_parameters() -> None:
    assert num_parameters(MLPLesson()) == 109_386
    assert num_parameters(CNNLesson()) == 52_138
    assert isinstance(CNNLesson().net, CNN)


def test_activation_is_only_active_where_asked() -> None:
    net = SimpleNet("none")
    x = torch.linspace(-3, 3, 7).unsqueeze(1)
    # Without an activation the network is affine: second differences vanish.
    y = net(x).squeeze(1)
    torch.testing.assert_close(y[2:] - 2 * y[1:-1] + y[:-2], torch.zeros(5), atol=1e-5, rtol=0)


def test_dropout_is_off_in_eval_mode() -> None:
    lesson = DropoutLesson(dropout=0.5).eval()
    x = torch.randn(4, 10)
    torch.testing.assert_close(lesson(x), lesson(x))


def test_predictions_are_probabilities_for_classifiers() -> None:
    lesson = MLPLesson().eval()
    probs = lesson.predict_step(torch.randn(5, 1, 28, 28), 0)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))
    binary = DropoutLesson().predict_step(torch.randn(5, 10), 0)
    assert ((binary >= 0) & (binary <= 1)).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "softplus"}, "activation must be one of"),
    ],
)
def test_bad_lesson_arguments_name_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RegressionLesson(**kwargs)


def test_bad_dropout_names_the_problem() -> None:
    with pytest.raises(ValueError, match="dropout must be a probability"):
        DropoutLesson(dropout=1.5)


@pytest.mark.parametrize("lesson_class", [MLPLesson, CNNLesson])
def test_label_smoothing_is_the_cross_entropy_with_smoothed_targets(lesson_class: type) -> None:
    images, labels = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4, 9])
    smoothed = lesson_class(label_smoothing=0.1)
    plain = lesson_class()
    plain.load_state_dict(smoothed.state_dict())  # same weights: only the loss differs
    logits = smoothed(images)
    loss, _, _ = smoothed.model_step((images, labels))
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1))
    plain_loss, _, _ = plain.model_step((images, labels))
    torch.testing.assert_close(plain_loss, torch.nn.functional.cross_entropy(logits, labels))
    assert not torch.isclose(loss, plain_loss)


@pytest.mark.parametrize(
    ("make_lesson", "message"),
    [
        (lambda: MLPLesson(label_smoothing=1.0), r"label_smoothing must be in \[0, 1\), got 1.0"),
        (lambda: CNNLesson(label_smoothing=-0.1), r"label_smoothing must be in \[0, 1\), got -0.1"),
    ],
)
def test_bad_label_smoothing_names_the_problem(make_lesson: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_lesson()


def test_the_course_class_names_build_the_course_networks() -> None:
    """``LinearNet``/``NonLinearNet`` (step 8), ``Classifier`` (step 9), ``DropoutNet`` (step 13) as the course names
    them: the same layers (so the course's own state_dicts load), the same counts; the networks return logits."""
    from torch import nn

    from gpu_lessons.models import Classifier, DropoutNet, LinearNet, NonLinearNet

    line = LinearNet()
    assert isinstance(line.activation, nn.Identity) and num_parameters(line) == 25
    x = torch.linspace(-3, 3, 7).unsqueeze(1)
    outputs = line(x).squeeze(1)
    assert torch.allclose(outputs[1:] - outputs[:-1], (outputs[1] - outputs[0]).expand(6), atol=1e-5)  # a line
    assert isinstance(NonLinearNet().activation, nn.ReLU) and num_parameters(NonLinearNet()) == 25
    assert Classifier is BlobClassifierNet and num_parameters(Classifier()) == 65
    course_classifier = nn.ModuleDict({"layer1": nn.Linear(2, 16), "layer2": nn.Linear(16, 1)})
    Classifier().load_state_dict(course_classifier.state_dict())  # the course's parameter names
    dropout = DropoutNet()
    assert dropout.dropout.p == 0.5 and num_parameters(dropout) == 18_049
    assert sorted(dropout.state_dict()) == sorted(OverfitNet().state_dict())


def test_a_scheduler_that_refuses_its_settings_is_one_clear_error(tmp_path) -> None:
    """A factory from Python that is no jsonargparse partial (so the trainer's length cannot be filled in) gets
    torch's own reason, as a UserError (one error line in the CLI), not a traceback mid-fit."""
    import lightning as L

    from gpu_lessons.data import LineDataModule
    from gpu_lessons.errors import UserError

    lesson = RegressionLesson(scheduler=lambda optimizer: torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1))
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path)
    with pytest.raises(UserError, match="the scheduler cannot be built: You must define either total_steps OR"):
        trainer.fit(lesson, datamodule=LineDataModule())
