"""The guarantees in docs/guarantees.md, each proved here (processes that must die are subprocesses)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import PIL.Image
import pytest
import torch

from gpu_lessons.checkpointing import AtomicCheckpointIO
from gpu_lessons.safe_checkpoints import load_checkpoint
from gpu_lessons.errors import CheckpointError
from gpu_lessons.models import RegressionLesson

from .conftest import CONFIGS, REPO, write_idx_dataset
from .helpers import QUIET, run

# A lesson that shuffles (batch 32 of 200 samples) and uses dropout; validation every epoch.
SHUFFLED_DROPOUT = [
    "--config", str(CONFIGS / "dropout.yaml"), *QUIET,
    "--data.init_args.batch_size", "32", "--data.init_args.steps_per_epoch", "1", "--trainer.check_val_every_n_epoch", "1",
    "--trainer.max_epochs", "4",
]


def cli_process(*args: str, cwd: Path, check_exit: int | None = 0) -> subprocess.CompletedProcess:
    """``python -m gpu_lessons ...`` in a fresh single-threaded process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "gpu_lessons", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if check_exit is not None:
        assert result.returncode == check_exit, result.stderr[-3000:]
    return result


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """Final weights of the shuffled dropout lesson trained without interruption."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    cli_process("fit", *SHUFFLED_DROPOUT, "--run_name", "run", cwd=workdir)
    return weights(workdir / "checkpoints/run/version_0/last.ckpt")


# 1. Resume is exact -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path: Path, uninterrupted: dict) -> None:
    killed = cli_process(
        "fit", *SHUFFLED_DROPOUT, "--run_name", "run",
        "--trainer.callbacks+=tests.helpers.KillAtEpochStart", "--trainer.callbacks.epoch", "2",
        cwd=tmp_path, check_exit=None,
    )
    assert killed.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "checkpoints/run/version_0/last.ckpt")["epoch"] == 1
    cli_process("fit", *SHUFFLED_DROPOUT, "--run_name", "run", "--ckpt_path", "checkpoints/run/version_0/last.ckpt", cwd=tmp_path)
    assert_bit_identical(weights(tmp_path / "checkpoints/run/version_1/last.ckpt"), uninterrupted)  # the resume's own


# 3. SIGTERM saves and exits 143 (and a mid-epoch resume is exact too) ---------------------------------------------


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_exits_143_and_resumes_exactly(tmp_path: Path, uninterrupted: dict) -> None:
    stopped = cli_process(
        "fit", *SHUFFLED_DROPOUT, "--run_name", "run",
        "--trainer.callbacks+=tests.helpers.SigtermAtStep", "--trainer.callbacks.step", "10",  # 7 steps/epoch
        cwd=tmp_path, check_exit=143,
    )
    assert "stopped by SIGTERM" in stopped.stderr
    checkpoint = load_checkpoint(tmp_path / "checkpoints/run/version_0/last.ckpt")
    assert checkpoint["global_step"] == 10 and checkpoint["epoch"] == 1  # mid-epoch: 3 of epoch 1's 7 batches
    cli_process("fit", *SHUFFLED_DROPOUT, "--run_name", "run", "--ckpt_path", "checkpoints/run/version_0/last.ckpt", cwd=tmp_path)
    assert_bit_identical(weights(tmp_path / "checkpoints/run/version_1/last.ckpt"), uninterrupted)  # the resume's own


# 2. Saves are atomic ----------------------------------------------------------------------------------------------

SAVER = textwrap.dedent(
    """
    import sys, torch
    from gpu_lessons.checkpointing import AtomicCheckpointIO
    io, path = AtomicCheckpointIO(), sys.argv[1]
    i = int(sys.argv[2])
    while True:  # ~16 MB per save, each a consistent (counter, tensor filled with counter) pair
        i += 1
        io.save_checkpoint({"state_dict": {"w": torch.full((4_000_000,), float(i))}, "counter": i}, path)
    """
)


@pytest.mark.slow
def test_killing_saves_at_random_moments_never_loses_the_checkpoint(tmp_path: Path) -> None:
    other_filesystem = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path / "elsewhere"
    target = tmp_path / "ckpts" / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(other_filesystem)}
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(1)}, "counter": 0}, target)
    generator = torch.Generator().manual_seed(0)
    for kill in range(20):
        process = subprocess.Popen([sys.executable, "-c", SAVER, str(target), str(1000 * kill)], env=env)
        time.sleep(1.0 + 0.6 * torch.rand((), generator=generator).item())  # import time + a random moment
        process.kill()
        process.wait()
        checkpoint = load_checkpoint(target)  # always a complete, loadable file
        assert torch.equal(checkpoint["state_dict"]["w"], torch.full_like(checkpoint["state_dict"]["w"], checkpoint["counter"]))
        leftovers = list(target.parent.glob(".*.tmp"))
        assert len(leftovers) <= 1  # at most the save the kill interrupted; the next save removes it
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


# 4. No code runs from a checkpoint --------------------------------------------------------------------------------


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


@pytest.fixture
def evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload(marker)}, "pytorch-lightning_version": "2.6.6"}, path)
    return path, marker


@pytest.mark.parametrize("force_unsafe", [False, True], ids=["default", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1"])
def test_a_pickle_payload_is_refused_and_never_runs(
    evil_checkpoint, force_unsafe: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    path, marker = evil_checkpoint
    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.chdir(tmp_path)
    for subcommand in ("test", "predict", "fit"):
        with pytest.raises(SystemExit) as exit_info:
            run(subcommand, "regression", "--ckpt_path", str(path))
        assert exit_info.value.code == 2
        assert "refusing to load it" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="refusing to load it"):
        RegressionLesson.load_from_checkpoint(path)
    with pytest.raises(CheckpointError, match="refusing to load it"):
        AtomicCheckpointIO().load_checkpoint(path)
    assert not marker.exists()


def test_every_checkpoint_the_package_writes_is_weights_only(tmp_path: Path, monkeypatch, tiny_mnist: Path) -> None:
    monkeypatch.chdir(tmp_path)
    run("fit", "step_lr", "--trainer.max_epochs", "2")
    run("fit", "cnn", "--data.init_args.data_dir", str(tiny_mnist), "--data.init_args.val_size", "100",
        "--trainer.max_epochs", "1")
    # a lesson and DataModule built in Python (a Path data_dir, callables as optimizer) too
    import lightning as L
    from gpu_lessons.data import MNISTDataModule
    from gpu_lessons.models import MLPLesson

    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path / "py",
                        plugins=[AtomicCheckpointIO()])
    trainer.fit(MLPLesson(), datamodule=MNISTDataModule(data_dir=tiny_mnist, val_size=100, download=False))
    written = sorted(tmp_path.rglob("*.ckpt"))
    assert len(written) >= 5
    for path in written:
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == [], path


# 5. Non-finite loss fails fast ------------------------------------------------------------------------------------


def test_nan_loss_stops_at_its_step_and_never_reaches_a_checkpoint(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "step_lr", "--trainer.callbacks+=tests.helpers.PoisonWeightsAtStep", "--trainer.callbacks.step", "3")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error: the training loss became nan at step 4 (epoch 3, batch 0)" in err and "Traceback" not in err
    saved = sorted((tmp_path / "checkpoints/step_lr/version_0").glob("*.ckpt"))
    assert saved, "the epochs before the NaN were checkpointed"
    for path in saved:
        checkpoint = load_checkpoint(path)
        assert checkpoint["epoch"] <= 2
        assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


# 6. Bad input: one clear message, non-zero exit, nothing overwritten -----------------------------------------------


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file's hash and every folder (a bad run must not leave even an empty version folder)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with real checkpoints and logs from earlier runs, which bad input must leave untouched."""
    workdir = tmp_path_factory.mktemp("trained")
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        run("fit", "classifier", "--trainer.max_epochs", "5")
        run("fit", "regression", "--trainer.max_epochs", "5")
        # no validation in its one epoch: it keeps only last.ckpt
        run("fit", "regression", "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "2", "--run_name", "only_last")
    finally:
        os.chdir(cwd)
    (workdir / "notes.txt").write_text("not a checkpoint\n")
    torch.save(torch.zeros(3), workdir / "tensor.pt")
    last = (workdir / "checkpoints/regression/version_0/last.ckpt").read_bytes()
    (workdir / "truncated.ckpt").write_bytes(last[: len(last) // 2])
    (workdir / "binary.yaml").write_bytes(bytes(range(128, 256)))
    laughs = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]  # each level names the one below ten times: 10**9 values
    laughs += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    (workdir / "laughs.yaml").write_text("\n".join(laughs) + "\n")
    shutil.copy(workdir / "laughs.yaml", workdir / "laughs.txt")  # a name no check of the command line reads
    (workdir / "names_laughs.yaml").write_text("data: laughs.txt\n")
    os.mkfifo(workdir / "fifo.yaml")
    (workdir / "huge.yaml").write_text("# " + "x" * 1_200_000 + "\n")
    (workdir / "checkpoints" / "loop").symlink_to("loop")  # a run folder that is a symlink to itself
    write_idx_dataset(workdir / "damaged_mnist", num_train=60, num_test=20)
    (workdir / "damaged_mnist/MNIST/raw/train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03 truncated")
    _damaged_checkpoints(workdir)
    (workdir / "one_class" / "7").mkdir(parents=True)
    PIL.Image.new("L", (28, 28)).save(workdir / "one_class" / "7" / "a.png")
    return workdir


def _damaged_checkpoints(workdir: Path) -> None:
    """Checkpoints with plain-data damage (each passes ``weights_only``), beside the good ones."""
    good = load_checkpoint(workdir / "checkpoints/regression/version_0/last.ckpt")
    damage = {
        "state_dict_5": lambda c: c.update(state_dict=5),
        "wrong_shapes": lambda c: c["state_dict"].update({"net.layer1.weight": torch.zeros(3, 3)}),
        "bad_rng": lambda c: c["callbacks"].update(RandomStates={"torch": "seeds", "cuda": None, "python": None}),
        "bad_loops": lambda c: c.update(loops=5),
        "weights_only": lambda c: [c.pop(k) for k in ("optimizer_states", "lr_schedulers", "loops")],
        "bad_history": lambda c: c["callbacks"].update(LessonPictures={"history": [{"epoch": "one"}]}),
        "garbled": lambda c: c["hyper_parameters"].update(activation=7),
    }
    for name, change in damage.items():
        checkpoint = load_checkpoint(workdir / "checkpoints/regression/version_0/last.ckpt")
        change(checkpoint)
        torch.save(checkpoint, workdir / f"{name}.ckpt")
    assert good["state_dict"]  # the source was left as it was


# A billion laughs small enough to give on the command line: each of 7 levels names the one below ten times.
INLINE_LAUGHS = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}' if i > 1 else '*a'] * 10)}]\n" for i in range(1, 8)
)

BAD_INPUTS = {
    "unknown config key": (["fit", "classifier", "--model.init_args.nonsense", "1"], "nonsense"),
    "wrong type": (["fit", "classifier", "--trainer.max_epochs", "ten"], "max_epochs"),
    "unknown lesson class": (["fit", "classifier", "--model", "gpu_lessons.models.NoSuchLesson"], "NoSuchLesson"),
    "invalid choice": (["fit", "regression", "--model.init_args.activation", "softplus"], "activation"),
    "batch size 0": (["fit", "classifier", "--data.init_args.batch_size", "0"], "batch_size must be a positive integer"),
    "negative lr": (["fit", "classifier", "--model.init_args.optimizer.init_args.lr", "-0.1"], "Invalid learning rate: -0.1"),
    "dropout 1.5": (["fit", "dropout", "--model.init_args.dropout", "1.5"], "dropout must be a probability in [0, 1)"),
    "label smoothing 1": (["fit", "mlp", "--model.init_args.label_smoothing", "1"], "label_smoothing must be in [0, 1)"),
    "last.ckpt as a link": (["fit", "classifier", "--checkpoint.save_last", "link"], "last.ckpt, the latest epoch, is written every epoch by last_checkpoint"),
    "noise < 0": (["fit", "regression", "--data.init_args.noise", "-1"], "noise must be >= 0"),
    "a seed too large for numpy": (["fit", "regression", "--seed_everything", "100000000000000000000000"], "seed_everything must be true, false or a whole number from 0 to 4294967295"),
    "a data seed too large": (["fit", "regression", "--data.init_args.seed", "100000000000000000000000"], "seed must be a whole number from 0 to 4294967295"),
    "an infinite train_x": (["fit", "regression", "--data.init_args.train_x", "[1e400]"], "must be finite numbers"),
    "an abbreviated option": (["fit", "regression", "--trainer.max_epoch", "3"], "unrecognized arguments: --trainer.max_epoch"),
    "val_check_interval 0": (["fit", "regression", "--trainer.val_check_interval", "0"], "trainer.val_check_interval must be more than 0"),
    "limit_train_batches 0": (["fit", "regression", "--trainer.limit_train_batches", "0"], "trainer.limit_train_batches must be more than 0"),
    "a YAML billion laughs": (["fit", "--config", "laughs.yaml"], "laughs.yaml expands to more than 100,000 values"),
    "a config over 1 MB": (["fit", "--config", "huge.yaml"], "huge.yaml is 1,200,"),
    "a billion laughs given inline": (
        ["fit", "--config", INLINE_LAUGHS],
        "(given inline) expands to more than 100,000 values",
    ),
    "missing config file": (["fit", "--config", "nope.yaml"], "nope.yaml"),
    # A group's own file (--data d.yaml) and any option's value given inline are read alike, so bounded alike.
    "a billion laughs as the data's file": (["fit", "regression", "--data", "laughs.yaml"], "--data laughs.yaml expands to more than 100,000 values"),
    "a trainer file over 1 MB": (["fit", "regression", "--trainer=huge.yaml"], "--trainer huge.yaml is 1,200,"),
    "a binary model file": (["fit", "regression", "--model", "binary.yaml"], "--model binary.yaml is not a YAML text file"),
    "a billion laughs as the optimizer's file": (
        ["fit", "regression", "--model.init_args.optimizer", "laughs.yaml"],
        "--model.init_args.optimizer laughs.yaml expands to more than 100,000 values",
    ),
    "a billion laughs in a file a config names": (["fit", "--config", "names_laughs.yaml"], "expands to more than 100,000 values"),
    "a billion laughs in a .txt optimizer file": (
        ["fit", "regression", "--model.init_args.optimizer", "laughs.txt"], "expands to more than 100,000 values"
    ),
    "a FIFO as the data's file": (["fit", "regression", "--data", "fifo.yaml"], "--data fifo.yaml is not a regular file"),
    "a billion laughs given inline to a callback list": (
        ["fit", "regression", "--trainer.callbacks", INLINE_LAUGHS],
        "--trainer.callbacks (given inline) expands to more than 100,000 values",
    ),
    "missing ckpt_path": (["test", "regression", "--ckpt_path", "checkpoints/regression/gone.ckpt"], "no such checkpoint file"),
    "truncated ckpt_path": (["test", "regression", "--ckpt_path", "truncated.ckpt"], "not a readable PyTorch checkpoint"),
    "non-checkpoint text file": (["test", "regression", "--ckpt_path", "notes.txt"], "not a readable PyTorch checkpoint"),
    "tensor file, not a checkpoint": (["test", "regression", "--ckpt_path", "tensor.pt"], "not a Lightning checkpoint"),
    "foreign-lesson ckpt_path": (
        ["test", "regression", "--ckpt_path", "checkpoints/classifier/version_0/last.ckpt"],
        "holds a BlobClassifierLesson, not a RegressionLesson",
    ),
    "missing MNIST offline": (["fit", "mlp", "--data.init_args.data_dir", "no_data", "--data.init_args.download", "false"], "MNIST is not in"),
    "unwritable checkpoints folder": (["fit", "classifier", "--checkpoint.dirpath", "notes.txt/ckpts"], "notes.txt is a file, not a folder"),
    "strict GPU on a CPU machine": (["fit", "classifier", "--strict_accelerator", "true"], "accelerator 'gpu' was requested"),
    "unknown subcommand": (["train", "classifier"], "train"),
    "misspelt option": (["fit", "regression", "--model.init_args.activaton", "relu"], "model.init_args.activaton: RegressionLesson has no argument 'activaton'; did you mean 'activation'?"),
    "checkpoint with garbled hyperparameters": (["test", "regression", "--ckpt_path", "garbled.ckpt"], "hyperparameter 'activation' is 7"),
    "devices 0 (falling back to the CPU)": (["fit", "classifier", "--trainer.devices", "0"], "trainer.devices '0' is not a device count"),
    "devices 0 on the CPU": (["fit", "classifier", "--trainer.accelerator", "cpu", "--trainer.devices", "0"], "invalid configuration: `Trainer(devices='0')`"),
    "max_epochs -5": (["fit", "classifier", "--trainer.max_epochs", "-5"], "`max_epochs` must be a non-negative integer or -1"),
    "accelerator tpu": (["fit", "classifier", "--trainer.accelerator", "tpu"], "invalid configuration:"),
    "accumulate_grad_batches 0": (["fit", "classifier", "--trainer.accumulate_grad_batches", "0"], "trainer.accumulate_grad_batches must be a positive integer, got 0"),
    "checkpoint monitor that is never logged": (["fit", "classifier", "--checkpoint.monitor", "val/nope"], "checkpoint.monitor 'val/nope' is not a metric BlobClassifierLesson logs"),
    "plateau monitor that is never logged": (["fit", "plateau", "--model.init_args.monitor", "val/x"], "monitor 'val/x' is not a metric this lesson logs"),
    "binary YAML config": (["fit", "--config", "binary.yaml"], "--config binary.yaml is not a YAML text file"),
    "num_train 1e11": (["fit", "dropout", "--data.init_args.num_train", "100000000000"], "more than the 100,000,000 that synthetic data may hold"),
    "run folder that is a symlink loop": (["fit", "classifier", "--run_name", "loop"], "checkpoints/loop is a symbolic link that loops"),
    "damaged MNIST file": (["fit", "mlp", "--data.init_args.data_dir", "damaged_mnist", "--data.init_args.download", "false"], "is damaged: train-images-idx3-ubyte"),
    "checkpoint whose state_dict is 5": (["test", "regression", "--ckpt_path", "state_dict_5.ckpt"], "its state_dict is not a mapping of parameter names to tensors"),
    "checkpoint of the wrong shapes": (["test", "regression", "--ckpt_path", "wrong_shapes.ckpt"], "net.layer1.weight of shape [3, 3], not [8, 1]"),
    "resume with damaged RNG states": (["fit", "regression", "--ckpt_path", "bad_rng.ckpt", "--trainer.max_epochs", "9"], "random-number states are damaged"),
    "resume with damaged loop state": (["fit", "regression", "--ckpt_path", "bad_loops.ckpt"], "bad_loops.ckpt holds no loops"),
    "resume from weights only": (["fit", "regression", "--ckpt_path", "weights_only.ckpt"], "holds no loops or optimizer_states"),
    "resume with another optimizer": (
        ["fit", "regression", "--ckpt_path", "checkpoints/regression/version_0/last.ckpt",
         "--model.init_args.optimizer", "torch.optim.SGD", "--model.init_args.optimizer.lr", "0.1"],
        "was trained with another optimizer than the configured SGD (its state has no dampening, momentum)",
    ),
    "ckpt_path last before any run": (["test", "step_lr", "--ckpt_path", "last"], "run 'step_lr' has no checkpoint in checkpoints/step_lr/ yet"),
    "ckpt_path best of a run that keeps only last": (["test", "regression", "--ckpt_path", "best", "--run_name", "only_last"], "records no best checkpoint"),
    "ckpt_path hpc": (["test", "classifier", "--ckpt_path", "hpc"], "--ckpt_path hpc is not supported"),
    "run_name outside checkpoints/": (["fit", "classifier", "--run_name", "../../x"], "--run_name must be a plain folder name"),
    "checkpoint folder of another run": (
        ["fit", "classifier", "--checkpoint.dirpath", "checkpoints/regression/version_0"],
        "checkpoints/regression/version_0 already holds another run's checkpoints (epoch",
    ),
    "unknown lesson name": (["fit", "--config", "nope"], "--config nope: no such file, and not a shipped lesson; the lessons are regression, "),
    "init_weights beside ckpt_path": (
        ["fit", "regression", "--init_weights", "checkpoints/regression/version_0/last.ckpt", "--ckpt_path", "checkpoints/regression/version_0/last.ckpt"],
        "or --init_weights (train anew from its weights, e.g. on other data), not both",
    ),
    "init_weights for test": (["test", "regression", "--init_weights", "last"], "--init_weights is for fit"),
    "init_weights of another lesson": (
        ["fit", "regression", "--init_weights", "checkpoints/classifier/version_0/last.ckpt"],
        "holds a BlobClassifierLesson, not a RegressionLesson",
    ),
    "init_weights last before any run": (["fit", "step_lr", "--init_weights", "last"], "--init_weights last: run 'step_lr' has no checkpoint"),
    "init_weights of the wrong shapes": (["fit", "regression", "--init_weights", "wrong_shapes.ckpt"], "net.layer1.weight of shape [3, 3], not [8, 1]"),
    "image folder that does not exist": (
        ["fit", "cnn", "--data", "gpu_lessons.data.ImageFolderDataModule", "--data.root", "no_pictures"],
        "data.root no_pictures: does not exist",
    ),
    "image folder with one class": (
        ["fit", "cnn", "--data", "gpu_lessons.data.ImageFolderDataModule", "--data.root", "one_class"],
        "data.root one_class needs a subfolder of pictures per class",
    ),
    "predict input of the wrong shape": (["predict", "classifier", "--data.init_args.predict_points", "[[1, 2, 3]]"], "predict_points"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_one_clear_error_and_changes_nothing(case: str, trained_workdir: Path, monkeypatch, capsys) -> None:
    args, expected = BAD_INPUTS[case]
    monkeypatch.chdir(trained_workdir)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if len(args) > 1 and not args[1].startswith("-"):  # a config name
        args = [args[0], "--config", str(CONFIGS / f"{args[1]}.yaml"), *args[2:]]
    before = _snapshot(trained_workdir)
    with pytest.raises(SystemExit) as exit_info, pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["gpu_lessons"])
        from gpu_lessons.cli import cli_main

        cli_main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code not in (0, None)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and expected in errors[0], err
    # the whole of stderr is short: at most the seed and CPU-fallback lines beside the error, never a usage block
    assert len(err.splitlines()) <= 3 and len(err) < 1200, err
    assert _snapshot(trained_workdir) == before


def test_a_full_disk_is_one_error_line_and_the_last_checkpoint_survives(trained_workdir: Path, monkeypatch, capsys) -> None:
    import errno

    monkeypatch.chdir(trained_workdir)
    before = _snapshot(trained_workdir)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "checkpoints/regression/version_9/last.ckpt")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "regression", "--ckpt_path", "checkpoints/regression/version_0/last.ckpt", "--trainer.max_epochs", "9")
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line] == [
        "error: cannot write or read checkpoints/regression/version_9/last.ckpt: No space left on device"
    ]
    assert _snapshot(trained_workdir) == before  # the old last.ckpt intact, and no half-made run folders


def test_a_save_never_removes_another_live_writers_temporary_file(tmp_path: Path) -> None:
    """Two runs saving to one folder: the second save must not delete the first's temporary file mid-write (the
    first would then fail on its rename). Only a dead writer's leftovers are removed."""
    from gpu_lessons.atomic_files import write_atomically

    target = tmp_path / "last.ckpt"

    def first_writer(file) -> None:
        file.write(b"first")
        write_atomically(target, lambda other: other.write(b"second"))  # another writer, while this one is open

    write_atomically(target, first_writer)
    assert target.read_bytes() == b"first"  # the first writer's rename still found its file
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    from gpu_lessons.atomic_files import _HOST

    leftover = tmp_path / f".last.ckpt.{_HOST}.{int(dead.stdout)}.abcd1234.tmp"
    foreign = tmp_path / ".last.ckpt.otherhost.1.abcd1234.tmp"  # another machine's, on a shared folder
    leftover.write_bytes(b"killed mid-save")
    foreign.write_bytes(b"still writing elsewhere")
    write_atomically(target, lambda file: file.write(b"third"))
    assert not leftover.exists() and foreign.exists() and target.read_bytes() == b"third"


def test_a_nan_validation_loss_is_never_the_best_checkpoint() -> None:
    from gpu_lessons.checkpointing import LessonCheckpoint

    checkpoint = LessonCheckpoint(monitor="val/loss", save_top_k=1)
    assert checkpoint.check_monitor_top_k(None, torch.tensor(float("nan"))) is False
    assert checkpoint.check_monitor_top_k(None, torch.tensor(float("inf"))) is False
    assert checkpoint.check_monitor_top_k(None, torch.tensor(0.5)) is True


def test_damaged_learning_curves_are_one_error_line(trained_workdir: Path, monkeypatch, capsys) -> None:
    from gpu_lessons.pictures import main as pictures_main

    monkeypatch.chdir(trained_workdir)
    before = _snapshot(trained_workdir)
    assert pictures_main(["bad_history.ckpt", "--output", "compare.png"]) == 2
    assert capsys.readouterr().err == "error: bad_history.ckpt: LessonPictures: its learning curves are damaged (not a list of per-epoch numbers)\n"
    assert _snapshot(trained_workdir) == before


# 7. Reproducible --------------------------------------------------------------------------------------------------


def test_same_seed_same_metrics_and_weights(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["--data.init_args.batch_size", "32", "--data.init_args.steps_per_epoch", "1", "--trainer.max_epochs", "3",
            "--trainer.check_val_every_n_epoch", "1"]
    first, second = run("fit", "dropout", *args, "--run_name", "a"), run("fit", "dropout", *args, "--run_name", "b")
    assert {k: float(v) for k, v in first.trainer.callback_metrics.items()} == {
        k: float(v) for k, v in second.trainer.callback_metrics.items()
    }
    assert_bit_identical(first.model.state_dict(), second.model.state_dict())


# 8. Distributed on an existing engine -----------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_and_tests_like_one_process(tmp_path: Path, tiny_mnist: Path) -> None:
    common = [
        "--config", str(CONFIGS / "mlp.yaml"), *QUIET,
        "--data.init_args.data_dir", str(tiny_mnist), "--data.init_args.val_size", "100",
        "--data.init_args.batch_size", "64", "--trainer.accelerator", "cpu",
    ]
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    cli_process("fit", *common, *ddp, "--trainer.max_epochs", "2", cwd=tmp_path)
    checkpoint = load_checkpoint(tmp_path / "checkpoints/mlp/version_0/last.ckpt")
    assert checkpoint["global_step"] == 2 * (500 // 2 // 64 + 1)  # each rank: 250 samples, 4 batches per epoch
    ddp_test = cli_process("test", *common, *ddp, "--ckpt_path", "checkpoints/mlp/version_0/last.ckpt", cwd=tmp_path)
    single_test = cli_process("test", *common, "--trainer.devices", "1", "--ckpt_path", "checkpoints/mlp/version_0/last.ckpt", cwd=tmp_path)

    def logged_accuracy(output: str) -> str:
        return next(line.split()[-1] for line in output.splitlines() if "test/acc" in line)

    assert logged_accuracy(ddp_test.stdout) == logged_accuracy(single_test.stdout)


def test_a_failed_save_names_the_file_asked_for_not_its_temporary_file(tmp_path: Path, monkeypatch, capsys) -> None:
    """A full disk (a write names no file) and a read-only folder (the temporary file is created first) are both
    reported as the output the user asked for; nothing is left behind."""
    import errno

    from gpu_lessons.atomic_files import write_atomically
    from gpu_lessons.errors import exit_code

    target = tmp_path / "last.ckpt"

    def disk_full(file) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as full:
        write_atomically(target, disk_full)
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".tmp"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(PermissionError) as denied:
        write_atomically(target, lambda file: file.write(b"x"))
    monkeypatch.undo()
    assert full.value.filename == denied.value.filename == str(target)
    assert exit_code(full.value) == 1 and exit_code(denied.value) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: cannot write or read {target}: No space left on device",
        f"error: cannot write or read {target}: Permission denied",
    ]
    assert list(tmp_path.iterdir()) == []
