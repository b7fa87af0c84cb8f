"""Plain-weights export: checkpoint -> bare ``state_dict`` file -> the plain network, with torch alone."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gpu_lessons.export import export_plain_weights, main
from gpu_lessons.models import CNN, CNNLesson, SimpleNet

from .helpers import run


@pytest.fixture(scope="module")
def cnn_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CNNLesson]:
    """A CNN lesson trained for two steps and saved from Python (so the checkpoint names no lesson class)."""
    torch.manual_seed(0)
    lesson = CNNLesson()
    data = TensorDataset(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(lesson, train_dataloaders=DataLoader(data, batch_size=4))
    path = tmp_path_factory.mktemp("cnn") / "cnn.ckpt"
    trainer.save_checkpoint(path)
    return path, lesson.cpu().eval()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_exported_weights_reproduce_the_lesson_network_exactly(
    cnn_checkpoint: tuple[Path, CNNLesson], tmp_path: Path
) -> None:
    checkpoint, lesson = cnn_checkpoint
    output = export_plain_weights(checkpoint, tmp_path / "cnn.pth", CNNLesson)
    assert output == tmp_path / "cnn.pth" and sorted(p.name for p in tmp_path.iterdir()) == ["cnn.pth"]
    (tmp_path / "reference").touch()
    assert output.stat().st_mode == (tmp_path / "reference").stat().st_mode  # as readable as any new file

    state_dict = torch.load(output, weights_only=True)  # torch alone: no Lightning, no gpu_lessons objects
    assert list(state_dict) == list(CNN().state_dict())  # the course's names: conv1.weight, ..., not net.conv1.weight
    plain = CNN().eval()
    plain.load_state_dict(state_dict)
    images = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(plain(images), lesson.net(images))
        assert not torch.equal(CNN().eval()(images), lesson.net(images))  # a fresh network would not pass


def test_a_checkpoint_written_from_python_needs_its_lesson_named(
    cnn_checkpoint: tuple[Path, CNNLesson], workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint, _ = cnn_checkpoint
    assert main(["--ckpt_path", str(checkpoint), "--output", "cnn.pth"]) == 2
    assert "does not record its lesson class" in capsys.readouterr().err
    assert main(["--ckpt_path", str(checkpoint), "--output", "cnn.pth", "--lesson", "CNNLesson"]) == 0
    out = capsys.readouterr().out
    assert f"wrote cnn.pth: the state_dict of CNN ({sum(p.numel() for p in CNN().parameters()):,} parameters)" in out
    assert "net(x) returns logits: class probabilities = net(x).softmax(dim=-1)" in out


def test_a_cli_checkpoint_exports_without_naming_the_lesson_and_the_printed_hint_loads_it(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    fitted = run("fit", "regression", "--trainer.max_epochs", "100", "--model.init_args.activation", "tanh")
    checkpoint = "checkpoints/regression/version_0/last.ckpt"
    capsys.readouterr()
    assert main(["--ckpt_path", checkpoint, "--output", "weights/line.pth"]) == 0
    hint = capsys.readouterr().out.split("to load it into the plain network:\n", 1)[1]
    assert len(hint.splitlines()) == 3 and "SimpleNet(activation='tanh')" in hint

    namespace: dict = {}
    exec(hint, namespace)  # the three lines a user would paste
    net = namespace["net"]
    x = torch.tensor([[6.0], [7.0], [10.0]])
    relu = SimpleNet("relu").eval()
    relu.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(net(x), fitted.model.cpu().eval().net(x))
        assert not torch.equal(relu(x), net(x))  # the hint's activation matters

    assert main(["--ckpt_path", checkpoint, "--output", "x.pth", "--lesson", "CNNLesson"]) == 2
    assert capsys.readouterr().err == f"error: {checkpoint} holds a RegressionLesson, not a CNNLesson\n"


def test_an_existing_output_is_kept_unless_overwrite(
    cnn_checkpoint: tuple[Path, CNNLesson], workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint, lesson = cnn_checkpoint
    (workdir / "cnn.pth").write_bytes(b"my own weights")
    command = ["--ckpt_path", str(checkpoint), "--output", "cnn.pth", "--lesson", "CNNLesson"]
    assert main(command) == 2
    assert capsys.readouterr().err == (
        "error: cnn.pth already exists and was left as it is; delete or rename it, choose another name, or pass "
        "--overwrite to replace it\n"
    )
    assert (workdir / "cnn.pth").read_bytes() == b"my own weights"
    with pytest.raises(FileExistsError, match="cnn.pth already exists"):
        export_plain_weights(checkpoint, workdir / "cnn.pth", CNNLesson)

    assert main([*command, "--overwrite"]) == 0
    state_dict = torch.load(workdir / "cnn.pth", weights_only=True)
    assert all(torch.equal(state_dict[name], value) for name, value in lesson.net.state_dict().items())
    assert sorted(p.name for p in workdir.iterdir()) == ["cnn.pth"]  # no temporary file left behind


def test_a_checkpoint_of_another_network_is_one_error_line(
    cnn_checkpoint: tuple[Path, CNNLesson], workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint, _ = cnn_checkpoint
    assert main(["--ckpt_path", str(checkpoint), "--output", "x.pth", "--lesson", "RegressionLesson"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {checkpoint} does not hold a RegressionLesson") and err.count("\n") == 1
    assert not (workdir / "x.pth").exists()


def _not_a_checkpoint(folder: Path) -> Path:
    path = folder / "notes.ckpt"
    path.write_text("hello\n")
    return path


def _bare_state_dict(folder: Path) -> Path:
    path = folder / "plain.pth"
    torch.save(SimpleNet().state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("make_checkpoint", "message"),
    [
        (lambda folder: folder / "missing.ckpt", "missing.ckpt: no such checkpoint file"),
        (_not_a_checkpoint, "notes.ckpt is not a readable PyTorch checkpoint"),
        (_bare_state_dict, "not a Lightning checkpoint"),
    ],
    ids=["missing", "not-a-checkpoint", "bare-state-dict"],
)
def test_bad_input_is_one_error_line_and_exit_code_2(
    make_checkpoint, message: str, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = make_checkpoint(workdir)
    assert main(["--ckpt_path", str(checkpoint), "--output", "out.pth", "--lesson", "RegressionLesson"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (workdir / "out.pth").exists()


def test_safetensors_without_the_package_is_a_clear_error(
    cnn_checkpoint: tuple[Path, CNNLesson],
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "safetensors", None)  # makes the import fail, installed or not
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    checkpoint, _ = cnn_checkpoint
    assert main(["--ckpt_path", str(checkpoint), "--output", "cnn.safetensors", "--lesson", "CNNLesson"]) == 2
    assert "needs the safetensors package: pip install safetensors" in capsys.readouterr().err
    assert list(workdir.iterdir()) == []


def test_safetensors_output_loads_into_the_plain_network(
    cnn_checkpoint: tuple[Path, CNNLesson], tmp_path: Path
) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    checkpoint, lesson = cnn_checkpoint
    output = export_plain_weights(checkpoint, tmp_path / "cnn.safetensors", CNNLesson)
    plain = CNN().eval()
    plain.load_state_dict(safetensors_torch.load_file(output))
    images = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(plain(images), lesson.net(images))


def test_export_takes_last_and_best_like_the_other_subcommands(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """``--ckpt_path last``/``best`` mean the newest run's, of ``--run_name`` or of the one run there is."""
    assert main(["--ckpt_path", "last", "--output", "none.pth"]) == 2
    assert "checkpoints/ holds no run" in capsys.readouterr().err
    run("fit", "regression", "--trainer.max_epochs", "2")
    assert main(["--ckpt_path", "last", "--output", "last.pth"]) == 0
    assert "from checkpoints/regression/version_0/last.ckpt" in capsys.readouterr().out
    run("fit", "classifier", "--trainer.max_epochs", "2")
    assert main(["--ckpt_path", "best", "--output", "best.pth"]) == 2
    assert "say which run with --run_name (the runs in checkpoints/ are classifier, regression)" in capsys.readouterr().err
    assert main(["--ckpt_path", "best", "--run_name", "classifier", "--output", "best.pth"]) == 0
    assert "from checkpoints/classifier/version_0/epoch001-val_loss" in capsys.readouterr().out
