"""A checkpoint is someone else's data: nothing in it may choose code, even when it holds only plain data.

Each attack below passes ``weights_only=True`` (the files hold only strings and dicts), so the pickle checks in
``test_reliability.py`` cannot catch them; what would run them is LightningCLI's merge of a checkpoint's
hyperparameters into the config, or Lightning's ``load_from_checkpoint`` with its ``_instantiator``, both of which
hand ``class_path`` entries to jsonargparse to import and call.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from gpu_lessons import export
from gpu_lessons.errors import CheckpointError
from gpu_lessons.models import Lesson, RegressionLesson

from .helpers import run

EVIL_MODULE = "gpu_lessons_evil_module"  # importing it (it is on sys.path in these tests) creates the marker file


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real regression checkpoint written by the CLI, which the attacks edit."""
    workdir = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        cli = run("fit", "regression", "--trainer.max_epochs", "2")
    return Path(cli.trainer.checkpoint_callback.dirpath, "last.ckpt")


@pytest.fixture
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file any code from a checkpoint would create; ``EVIL_MODULE`` is importable and creates it on import."""
    path = tmp_path / "code-ran"
    (tmp_path / f"{EVIL_MODULE}.py").write_text(
        f"open({str(path)!r}, 'w').write('imported')\n"
        "class EvilLesson: pass\nclass Net: pass\ndef instantiate(cls, config): return cls(**config)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert EVIL_MODULE not in sys.modules
    return path


def _os_system(marker: Path) -> dict[str, Any]:
    return {"class_path": "os.system", "init_args": {"command": f"touch {marker}"}}


ATTACKS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "optimizer spec calling os.system": lambda m: {"optimizer": _os_system(m)},
    "scheduler spec calling os.system": lambda m: {"scheduler": _os_system(m)},
    "class spec for a plain-typed argument": lambda m: {"activation": _os_system(m)},
    "nested net spec importing a module": lambda m: {"net": {"class_path": f"{EVIL_MODULE}.Net"}},
    "a callable named by a string": lambda m: {"optimizer": f"{EVIL_MODULE}.instantiate"},
    "lesson class from a module never imported": lambda m: {"_class_path": f"{EVIL_MODULE}.EvilLesson"},
    "lesson class that is not a lesson": lambda m: {"_class_path": "torch.nn.Linear"},
    "instantiator from a module never imported": lambda m: {"_instantiator": f"{EVIL_MODULE}.instantiate"},
    "instantiator that runs a command": lambda m: {"_instantiator": "os.system"},
    "an abstract lesson": lambda m: {"_class_path": "gpu_lessons.models.digits.DigitLesson"},
}
# Keys beside hyper_parameters that Lightning's loader also reads as constructor arguments (checkpoints of 0.7).
_CLI_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
TOP_LEVEL_ATTACKS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "legacy hparams key calling os.system": lambda m: {
        "hparams": {"_instantiator": _CLI_INSTANTIATOR, "optimizer": _os_system(m)}
    },
    "legacy module_arguments key importing a module": lambda m: {
        "module_arguments": {"_instantiator": _CLI_INSTANTIATOR, "_class_path": f"{EVIL_MODULE}.EvilLesson"}
    },
    "hparams_name pointing into the arguments": lambda m: {"hparams_name": "activation", "hparams": _os_system(m)},
}
ATTACKS.update({name: (lambda attack: lambda m: {"": attack(m)})(attack) for name, attack in TOP_LEVEL_ATTACKS.items()})


def _entry_points() -> dict[str, Callable[[Path], None]]:
    def cli(subcommand: str) -> Callable[[Path], None]:
        return lambda path: run(subcommand, "regression", "--ckpt_path", str(path))

    return {
        "fit": cli("fit"),
        "validate": cli("validate"),
        "test": cli("test"),
        "predict": cli("predict"),
        "RegressionLesson.load_from_checkpoint": lambda path: RegressionLesson.load_from_checkpoint(path),
        "Lesson.load_from_checkpoint": lambda path: Lesson.load_from_checkpoint(path),
        "export": lambda path: sys.exit(export.main(["--ckpt_path", str(path), "--output", "plain.pth"])),
    }


ENTRY_POINTS = _entry_points()


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_checkpoint_of_plain_data_never_chooses_code(
    attack: str, entry: str, trained: Path, marker: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = torch.load(trained, weights_only=True)
    change = ATTACKS[attack](marker)
    checkpoint.update(change.pop("", {}))  # top-level keys
    checkpoint["hyper_parameters"].update(change)
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    capsys.readouterr()

    if attack in TOP_LEVEL_ATTACKS:  # ignored, never refused: what loads is the lesson of the checked values
        try:
            ENTRY_POINTS[entry](evil)
        except SystemExit as exit_info:
            assert exit_info.code in (0, None)
        assert not marker.exists(), "code from the checkpoint ran"
        assert EVIL_MODULE not in sys.modules, "a module the checkpoint named was imported"
        return

    with pytest.raises((SystemExit, CheckpointError)) as refused:
        ENTRY_POINTS[entry](evil)

    if refused.type is SystemExit:  # the command lines: one error line, exit 2
        assert refused.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and str(evil) in err, err
    said = str(refused.value) if refused.type is CheckpointError else err
    if attack == "an abstract lesson":  # a real, imported Lesson subclass, but one without a network
        refusals = ("cannot build a DigitLesson", "not a RegressionLesson", "was trained by gpu_lessons.models.digits")
    else:
        refusals = ("refusing to load it",)
    assert any(refusal in said for refusal in refusals), said
    assert not marker.exists(), "code from the checkpoint ran"
    assert EVIL_MODULE not in sys.modules, "a module the checkpoint named was imported"
    assert not (tmp_path / "plain.pth").exists() and not (tmp_path / "lightning_logs").exists()


def test_a_checkpoint_saved_from_python_is_checked_against_the_configured_lesson(
    trained: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """No class recorded: its values are the configured lesson's, so a lesson-specific one is used, not dropped."""
    monkeypatch.chdir(tmp_path)
    checkpoint = torch.load(trained, weights_only=True)
    for key in ("_class_path", "_instantiator"):
        checkpoint["hyper_parameters"].pop(key)
    checkpoint["hyper_parameters"]["activation"] = "tanh"
    torch.save(checkpoint, tmp_path / "from_python.ckpt")
    run("predict", "regression", "--ckpt_path", "from_python.ckpt")
    assert "activation 'relu' -> 'tanh'" in capsys.readouterr().err


def test_hyperparameters_of_the_wrong_type_are_refused_by_name(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["hyper_parameters"]["activation"] = "softplus"
    torch.save(checkpoint, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match="hyperparameter 'activation' is 'softplus'"):
        RegressionLesson.load_from_checkpoint(tmp_path / "odd.ckpt")
    with pytest.raises(SystemExit):
        run("test", "regression", "--ckpt_path", "odd.ckpt")
    assert "hyperparameter 'activation' is 'softplus'" in capsys.readouterr().err


def test_checkpoints_the_cli_writes_still_load_everywhere(trained: Path, tmp_path: Path, monkeypatch) -> None:
    """The checks refuse code, not the package's own checkpoints (which name their lesson and instantiator)."""
    hparams = torch.load(trained, weights_only=True)["hyper_parameters"]
    assert hparams["_class_path"] == "gpu_lessons.models.RegressionLesson" and "_instantiator" in hparams
    monkeypatch.chdir(tmp_path)
    by_base, by_class = Lesson.load_from_checkpoint(trained), RegressionLesson.load_from_checkpoint(trained)
    assert type(by_base) is RegressionLesson and type(by_class) is RegressionLesson
    for a, b in zip(by_base.state_dict().values(), by_class.state_dict().values()):
        assert torch.equal(a, b)
    tested = run("test", "regression", "--ckpt_path", str(trained))
    assert tested.trainer.callback_metrics["test/loss"] >= 0
    assert export.main(["--ckpt_path", str(trained), "--output", "plain.pth"]) == 0


def test_another_lessons_checkpoint_is_named_not_called_unsafe(trained: Path) -> None:
    from gpu_lessons.models import CNNLesson

    with pytest.raises(CheckpointError, match="holds a RegressionLesson, not a CNNLesson"):
        CNNLesson.load_from_checkpoint(trained)


def test_the_cli_reads_a_checkpoint_once_and_lightnings_merge_never_sees_it(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LightningCLI's own merge of a checkpoint's hyperparameters into the config would read the file again and hand
    its ``class_path`` to jsonargparse; LessonCLI holds ``ckpt_path`` back until that step is over. The file is read
    once in all: the CLI checks it and hands what it checked to the trainer's checkpoint IO, which restores that."""
    monkeypatch.chdir(tmp_path)
    reads, load = [], torch.load

    def counted_load(file: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(file)  # the file opened once and checked (load_checkpoint hands torch the open file)
        return load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted_load)
    tested = run("test", "regression", "--ckpt_path", str(trained))
    assert len(reads) == 1  # no other checkpoint is read in a test run
    assert tested.config.test.ckpt_path == str(trained)  # and the trainer was given it
