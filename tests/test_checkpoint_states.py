"""A checkpoint's callback states and structure are someone else's data too: nothing in them may make the package
remove, write or read a file outside the run's own folder, and a damaged or oversized one is one error line.

Lightning restores a ``ModelCheckpoint``'s recorded paths and later deletes the ones that rotate out (recursively);
its "inside dirpath" test is textual. These tests plant victims where a checkpoint's paths point and resume from it.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from gpu_lessons.errors import CheckpointError
from gpu_lessons.checkpoint_states import MAX_HISTORY
from gpu_lessons.safe_checkpoints import MAX_DEPTH, load_checkpoint

from .helpers import run

PATH_FIELDS = ("best_model_path", "kth_best_model_path", "last_model_path")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real regression checkpoint written by the CLI (2 epochs), as a dict for the tests to edit."""
    workdir = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        cli = run("fit", "regression", "--trainer.max_epochs", "2")
    return torch.load(Path(cli.trainer.checkpoint_callback.dirpath, "last.ckpt"), weights_only=True)


def _victims(root: Path, run_folder: Path) -> dict[str, tuple[str, Path]]:
    """Files and folders outside the run folder, and the path by which a checkpoint's state names each."""
    outside = root / "outside"
    (outside / "victim_dir" / "inner").mkdir(parents=True)
    (outside / "victim_dir" / "inner" / "precious.txt").write_text("keep")
    for name in ("victim.txt", "absolute.ckpt", "linked.ckpt"):
        (outside / name).write_text("keep")
    (root / "victim.txt").write_text("keep")
    run_folder.parent.mkdir(parents=True)
    (run_folder.parent / "link").symlink_to(outside, target_is_directory=True)
    (run_folder.parent / "loop").symlink_to(run_folder.parent / "loop")  # resolve() raises RuntimeError on 3.11
    return {
        "a file, by ..": (f"{run_folder}/../../../victim.txt", root / "victim.txt"),
        "a folder, by ..": (f"{run_folder}/../../../outside/victim_dir", outside / "victim_dir" / "inner" / "precious.txt"),
        "an absolute path": (str(outside / "absolute.ckpt"), outside / "absolute.ckpt"),
        "a file through a linked folder": (f"{run_folder}/../link/linked.ckpt", outside / "linked.ckpt"),
        "a file through a link loop": (f"{run_folder}/../loop/x.ckpt", root / "victim.txt"),
    }


@pytest.mark.parametrize("recorded_folder", ["the resumed run's own", "another"])
def test_a_checkpoints_recorded_paths_never_remove_anything_outside_the_run_folder(
    trained: dict[str, Any], recorded_folder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every path field of both ModelCheckpoint states, and best_k_models, names each victim in turn; the resume
    (2 more epochs, so both callbacks save and rotate) still trains, and every victim survives."""
    monkeypatch.chdir(tmp_path)
    run_folder = (tmp_path / "checkpoints" / "regression" / "version_0").resolve()  # where this fit will write
    victims = _victims(tmp_path, run_folder)
    for case, (path, _) in victims.items():
        checkpoint = copy.deepcopy(trained)
        for state in checkpoint["callbacks"].values():
            if "best_model_path" in state:
                state.update({field: path for field in PATH_FIELDS})
                state["best_k_models"] = {victim: torch.tensor(0.0) for victim, _ in victims.values()}
                state["dirpath"] = str(run_folder) if recorded_folder.startswith("the") else str(tmp_path / "elsewhere")
        torch.save(checkpoint, tmp_path / "downloaded.ckpt")
        cli = run("fit", "regression", "--ckpt_path", "downloaded.ckpt", "--trainer.max_epochs", "4")
        assert cli.trainer.current_epoch == 4, case
        for name, (_, victim) in victims.items():
            assert victim.read_text() == "keep", f"{name} was removed by a checkpoint naming {case}"
        written = sorted(p.name for p in run_folder.iterdir())
        assert len(written) == 2 and "last.ckpt" in written, written  # the run's best and last, nothing else
        for folder in (run_folder, tmp_path / "lightning_logs"):  # the next case starts afresh
            shutil.rmtree(folder)


def test_a_resume_in_its_own_folder_keeps_its_own_best_checkpoints(trained: dict[str, Any], tmp_path: Path, monkeypatch) -> None:
    """The paths that are the run's own are kept: resuming in the checkpoint's own folder goes on rotating them."""
    monkeypatch.chdir(tmp_path)
    first = run("fit", "regression", "--trainer.max_epochs", "2")
    folder = Path(first.trainer.checkpoint_callback.dirpath)
    best_before = first.trainer.checkpoint_callback.best_model_path
    second = run(
        "fit", "regression", "--ckpt_path", str(folder / "last.ckpt"), "--checkpoint.dirpath", str(folder),
        "--trainer.max_epochs", "4",
    )
    best = second.trainer.checkpoint_callback
    assert Path(best.best_model_path).parent == folder.resolve()
    assert not Path(best_before).exists()  # the run's own older best rotated out, as in an uninterrupted run
    assert sorted(p.name for p in folder.glob("*.ckpt")) == sorted(["last.ckpt", Path(best.best_model_path).name])


def _edit(trained: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """A copy of the trained checkpoint, changed by ``change``."""
    checkpoint = copy.deepcopy(trained)
    change(checkpoint)
    return checkpoint


def _with_state(trained: dict[str, Any], name: str, change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """A copy whose callback state named ``name`` is changed in place by ``change``, or replaced by what it returns."""
    checkpoint = copy.deepcopy(trained)
    key = next(key for key in checkpoint["callbacks"] if key.startswith(name))
    result = change(checkpoint["callbacks"][key])
    if result is not None:
        checkpoint["callbacks"][key] = result
    return checkpoint


def _with_scaler(trained: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``trained`` with 16-mixed's GradScaler state as Lightning saves it (a CPU run has none), with ``changes``."""
    return {**trained, "MixedPrecision": {**torch.amp.GradScaler("cpu").state_dict(), **changes}}


DAMAGED_STATES: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "callbacks not a mapping": (lambda t: {**t, "callbacks": ["ModelCheckpoint"]}, "callbacks state is not a mapping"),
    "an unknown ModelCheckpoint key": (
        lambda t: _with_state(t, "LessonCheckpoint", lambda s: s.update(delete_me="/etc")), "does not keep: delete_me"
    ),
    "a string best_model_score": (
        lambda t: _with_state(t, "LessonCheckpoint", lambda s: s.update(best_model_score="0.1")), "its best_model_score is '0.1'"
    ),
    "a NUL byte in a recorded folder": (
        lambda t: _with_state(t, "ModelCheckpoint", lambda s: s.update(dirpath=s["dirpath"] + "\x00")), "its dirpath is"
    ),
    "a path that is not a string": (
        lambda t: _with_state(t, "ModelCheckpoint", lambda s: s.update(best_model_path=["/etc"])), "its best_model_path is"
    ),
    "best_k_models of 20,000 files": (
        lambda t: _with_state(t, "LessonCheckpoint", lambda s: s.update(best_k_models={f"{i}.ckpt": torch.tensor(0.0) for i in range(20_000)})),
        "its best_k_models is",
    ),
    "learning curves of too many epochs": (
        lambda t: _with_state(t, "LessonPictures", lambda s: {"history": [{"epoch": 1}] * (MAX_HISTORY + 1)}),
        "learning curves are damaged",
    ),
    "learning curves with an unknown key": (
        lambda t: _with_state(t, "LessonPictures", lambda s: {**s, "files": ["/etc/passwd"]}), "learning curves are damaged"
    ),
    "random states of another shape": (
        lambda t: _with_state(t, "RandomStates", lambda s: {**s, "torch": torch.zeros(3, dtype=torch.uint8)}),
        "random-number states are damaged",
    ),
    "random states with a string": (
        lambda t: _with_state(t, "RandomStates", lambda s: {**s, "python": "seed"}), "random-number states are damaged"
    ),
    # 16-mixed's GradScaler state, as Lightning saves it beside the callbacks' (a CPU run has none to change).
    "a GradScaler state with a NaN scale": (lambda t: _with_scaler(t, scale=float("nan")), "has scale nan"),
    "a GradScaler state with an unknown key": (lambda t: _with_scaler(t, run="rm -rf /"), "has unknown key 'run'"),
    "an old GradScaler state that is not a mapping": (
        lambda t: {**t, "native_amp_scaling_state": [65536.0]}, "not a mapping",
    ),
    # each would pass a check of kinds alone, then fail mid-fit with a traceback or a misleading NaN-loss message
    "a GradScaler scale beyond any float": (lambda t: _with_scaler(t, scale=10**400), "has scale 1000"),
    "a GradScaler scale as a tensor": (lambda t: _with_scaler(t, scale=torch.ones(1)), "has scale tensor"),
    "a fractional GradScaler growth_interval": (lambda t: _with_scaler(t, growth_interval=2.5), "has growth_interval 2.5"),
    "a zero GradScaler backoff_factor": (
        lambda t: _with_scaler(t, backoff_factor=0.0), "has backoff_factor 0.0, which a GradScaler cannot run with"
    ),
}



def _assert_resume_is_one_error_line(expected: str, workdir: Path, monkeypatch, capsys) -> None:
    """``fit --ckpt_path damaged.ckpt`` in ``workdir``: exit 2, one short ``error:`` line saying ``expected``, and no
    run folders left behind."""
    monkeypatch.chdir(workdir)
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "regression", "--ckpt_path", "damaged.ckpt", "--trainer.max_epochs", "3")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0] and len(errors[0]) < 400, err
    assert sorted(p.name for p in workdir.iterdir()) == ["damaged.ckpt"]


@pytest.mark.parametrize("case", list(DAMAGED_STATES), ids=list(DAMAGED_STATES))
def test_a_damaged_callback_state_is_one_error_line(case: str, trained: dict[str, Any], tmp_path: Path, monkeypatch, capsys) -> None:
    change, expected = DAMAGED_STATES[case]
    torch.save(change(trained), tmp_path / "damaged.ckpt")
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(tmp_path / "damaged.ckpt")
    _assert_resume_is_one_error_line(expected, tmp_path, monkeypatch, capsys)


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _shared(depth: int) -> list:
    """A list that names the one below it four times: ``depth`` levels describe 4**depth entries in a few bytes."""
    value: list = [1]
    for _ in range(depth):
        value = [value] * 4
    return value


OVERSIZED: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "hyperparameters nested 5,000 deep": (
        lambda t: {**t, "hyper_parameters": {**t["hyper_parameters"], "activation": _nested(5000)}}, f"more than {MAX_DEPTH} levels"
    ),
    "data hyperparameters nested 5,000 deep": (
        lambda t: {**t, "datamodule_hyper_parameters": {**t["datamodule_hyper_parameters"], "train_x": _nested(5000)}},
        f"more than {MAX_DEPTH} levels",
    ),
    "shared references describing 4**20 entries": (
        lambda t: {**t, "hyper_parameters": {**t["hyper_parameters"], "activation": _shared(20)}}, "more than 1,000,000 entries"
    ),
    "a 50 MB string": (
        lambda t: {**t, "hyper_parameters": {**t["hyper_parameters"], "activation": "x" * 50_000_000}}, "50,000,000 characters"
    ),
    "an expanded tensor": (
        lambda t: {**t, "state_dict": {**t["state_dict"], "net.0.bias": torch.zeros(1).expand(8)}}, "only dense tensors"
    ),
    "a quantized tensor": (
        lambda t: {**t, "state_dict": {**t["state_dict"], "net.0.bias": torch.quantize_per_tensor(torch.zeros(8), 0.1, 0, torch.qint8)}},
        "only dense tensors",
    ),
    "a complex tensor": (
        lambda t: {**t, "state_dict": {**t["state_dict"], "net.0.bias": torch.zeros(8, dtype=torch.complex64)}}, "only dense tensors"
    ),
    "a tensor whose elements overlap": (
        lambda t: {**t, "state_dict": {**t["state_dict"], "net.0.weight": torch.zeros(9).as_strided((3, 3), (1, 1))}},
        "only dense tensors",
    ),
    "a sparse tensor of the right shape": (
        lambda t: {**t, "state_dict": {**t["state_dict"], "net.0.bias": torch.zeros(8).to_sparse()}}, "only dense tensors"
    ),
}


@pytest.mark.parametrize("case", list(OVERSIZED), ids=list(OVERSIZED))
def test_an_oversized_or_odd_checkpoint_is_refused_before_it_is_walked(case: str, trained: dict[str, Any], tmp_path: Path, capsys) -> None:
    change, expected = OVERSIZED[case]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)  # for torch.save to write the deep cases (an attacker writes the pickle by hand)
    try:
        torch.save(change(trained), tmp_path / "odd.ckpt")
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(CheckpointError, match=expected) as error:
        load_checkpoint(tmp_path / "odd.ckpt")
    assert len(str(error.value)) < 400


def test_a_compressed_archive_entry_is_refused_before_it_is_unpacked(trained: dict[str, Any], tmp_path: Path) -> None:
    """A deflated entry of zeros is a zip bomb in miniature: torch would unpack all of it."""
    plain, bomb = tmp_path / "plain.ckpt", tmp_path / "bomb.ckpt"
    torch.save({**trained, "extra": torch.zeros(2_000_000)}, plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            target.writestr(entry.filename, source.read(entry))
    assert bomb.stat().st_size < plain.stat().st_size / 20
    with pytest.raises(CheckpointError, match="is compressed, which torch.save never does"):
        load_checkpoint(bomb)


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero")
def test_what_is_not_a_checkpoint_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "folder.ckpt").mkdir()
    os.mkfifo(tmp_path / "fifo.ckpt")
    (tmp_path / "loop.ckpt").symlink_to(tmp_path / "loop.ckpt")
    (tmp_path / "dangling.ckpt").symlink_to(tmp_path / "nowhere")
    cases = {
        "folder.ckpt": "is a folder, not a checkpoint file",
        "fifo.ckpt": "is a FIFO, not a checkpoint file",
        "loop.ckpt": "cannot read it (Too many levels of symbolic links)",
        "dangling.ckpt": "a symbolic link to nothing",
        "missing.ckpt": "no such checkpoint file",
    }
    for name, expected in cases.items():
        with pytest.raises(CheckpointError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            load_checkpoint(tmp_path / name)
    if Path("/dev/zero").exists():
        with pytest.raises(CheckpointError, match="is a device or other special file"):
            load_checkpoint("/dev/zero")


def _fit_loop(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return checkpoint["loops"]["fit_loop"]


def _position(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return _fit_loop(checkpoint)["state_dict"]["combined_loader"][0]


def _adam(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return checkpoint["optimizer_states"][0]


UNRESUMABLE: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "a loop counter of -10**12": (
        lambda c: _fit_loop(c)["epoch_progress"]["current"].update(completed=-10**12), "is -1000000000000, not a count"
    ),
    "a loop counter that is a string": (
        lambda c: _fit_loop(c)["epoch_loop.batch_progress"]["total"].update(ready="100"), "is '100', not a count"
    ),
    "a missing loop key": (lambda c: _fit_loop(c).pop("epoch_progress"), "fit_loop has no epoch_progress"),
    "an unknown loop key": (lambda c: _fit_loop(c)["epoch_progress"].update(extra=1), "has unknown keys extra"),
    "two optimizer states": (lambda c: c["optimizer_states"].append(_adam(c)), "holds 2 optimizer states"),
    "100,000 parameter ids": (
        lambda c: _adam(c)["param_groups"][0].update(params=list(range(100_000))), "100,000 parameter ids, not this lesson's 4"
    ),
    "a string learning rate": (lambda c: _adam(c)["param_groups"][0].update(lr="0.01"), "optimizer's lr is '0.01'"),
    "an optimizer buffer of the wrong shape": (
        lambda c: _adam(c)["state"][0].update(exp_avg=torch.zeros(3, 3)), "exp_avg' for parameter 0 has shape [3, 3]"
    ),
    "an expanded optimizer buffer": (
        lambda c: _adam(c)["state"][1].update(exp_avg=torch.zeros(1).expand(8)), "only dense tensors"
    ),
    "a meta tensor of the right shape": (
        lambda c: c["state_dict"].update({"net.0.bias": torch.empty(8, device="meta")}), "only dense tensors"
    ),
    "batches_trained -1": (lambda c: _position(c).update(batches_trained=-1), "position in the epoch is damaged: its batches_trained is -1"),
    "batch_size 0": (lambda c: _position(c).update(batch_size=0), "its batch_size is 0"),
    "an LR scheduler state for a lesson without one": (lambda c: c.update(lr_schedulers=[{"gamma": "x"}]), "has no scheduler"),
    "batch_size null": (lambda c: _position(c).update(batch_size=None), "its batch_size is None"),
    "a position without batches_trained": (lambda c: _position(c).pop("batches_trained"), "position in the epoch is damaged"),
}


@pytest.mark.parametrize("case", list(UNRESUMABLE), ids=list(UNRESUMABLE))
def test_a_checkpoint_fit_cannot_resume_from_is_one_error_line_and_leaves_no_folders(
    case: str, trained: dict[str, Any], tmp_path: Path, monkeypatch, capsys
) -> None:
    change, expected = UNRESUMABLE[case]
    torch.save(_edit(trained, change), tmp_path / "damaged.ckpt")
    _assert_resume_is_one_error_line(expected, tmp_path, monkeypatch, capsys)


def test_a_resume_into_a_new_version_folder_shows_no_dirpath_warning(trained: dict[str, Any], tmp_path: Path, monkeypatch) -> None:
    """Lightning warns "The dirpath has changed ... won't be reloaded" on every such resume; here nothing of another
    folder is restored, quietly."""
    import warnings

    monkeypatch.chdir(tmp_path)
    torch.save(trained, tmp_path / "downloaded.ckpt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run("fit", "regression", "--ckpt_path", "downloaded.ckpt", "--trainer.max_epochs", "3")
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]


def test_the_checkpoint_io_never_reads_another_file_in_place_of_the_checked_one(trained: dict[str, Any], tmp_path: Path) -> None:
    """The CLI hands the checkpoint it checked to the IO plugin; a load of any other path then is an error, not an
    unchecked read (a link re-pointed between the check and the restore, say)."""
    from gpu_lessons.checkpointing import AtomicCheckpointIO

    torch.save(trained, tmp_path / "checked.ckpt")
    torch.save(trained, tmp_path / "other.ckpt")
    io = AtomicCheckpointIO()
    io.hand_over(tmp_path / "checked.ckpt", {"state_dict": {}, "marker": "checked"})
    with pytest.raises(CheckpointError, match="is not the checkpoint that was checked"):
        io.load_checkpoint(tmp_path / "other.ckpt")
    io.hand_over(tmp_path / "checked.ckpt", {"state_dict": {}, "marker": "checked"})
    assert io.load_checkpoint(tmp_path / "checked.ckpt")["marker"] == "checked"  # no second read of the file
    assert io.load_checkpoint(tmp_path / "checked.ckpt")["state_dict"].keys() == trained["state_dict"].keys()  # used once


def test_a_scheduler_state_unlike_the_configured_one_is_one_error_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """torch copies a saved scheduler state onto the scheduler unchecked: ReduceLROnPlateau's mode 'bogus' would fail
    in the middle of the fit."""
    monkeypatch.chdir(tmp_path)
    cli = run("fit", "plateau", "--trainer.max_epochs", "2")
    checkpoint = torch.load(Path(cli.trainer.checkpoint_callback.dirpath, "last.ckpt"), weights_only=True)
    checkpoint["lr_schedulers"][0]["mode"] = "bogus"
    torch.save(checkpoint, tmp_path / "damaged.ckpt")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "plateau", "--ckpt_path", "damaged.ckpt", "--trainer.max_epochs", "4")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "its lr_schedulers[0].mode is 'bogus', where the configured one has 'min'" in err


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_every_subcommand_checks_the_loop_state_it_restores(stage: str, trained: dict[str, Any], tmp_path: Path, monkeypatch, capsys) -> None:
    torch.save(_edit(trained, lambda c: c["loops"].pop(f"{stage}_loop")), tmp_path / "damaged.ckpt")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run(stage, "regression", "--ckpt_path", "damaged.ckpt")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert f"its loop state {stage}_loop is None, not a mapping" in err


def test_a_sound_gradscaler_state_loads(trained: dict[str, Any], tmp_path: Path) -> None:
    """The check refuses only damage: a GradScaler state as 16-mixed saves it, mid-run, loads unchanged."""
    checkpoint = _with_scaler(trained, scale=1024.0, _growth_tracker=37)
    torch.save(checkpoint, tmp_path / "mixed.ckpt")
    assert load_checkpoint(tmp_path / "mixed.ckpt")["MixedPrecision"] == checkpoint["MixedPrecision"]
