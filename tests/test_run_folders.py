"""One rule for where a run's checkpoints live: every ``fit`` writes ``checkpoints/<run>/version_N/`` beside
``lightning_logs/<run>/version_N/``, so each run's ``last.ckpt`` is its own and ``--ckpt_path last`` is the newest."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_lessons.safe_checkpoints import load_checkpoint

from .conftest import REPO
from .helpers import run
from .test_reliability import SHUFFLED_DROPOUT, cli_process

FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_second_fit_of_the_same_name_gets_its_own_folders_and_last_ckpt(workdir: Path, capsys) -> None:
    run("fit", "step_lr", "--trainer.max_epochs", "2")
    first = workdir / "checkpoints/step_lr/version_0/last.ckpt"
    first_bytes = _sha(first)
    run("fit", "step_lr", "--trainer.max_epochs", "3")
    second = workdir / "checkpoints/step_lr/version_1/last.ckpt"
    assert load_checkpoint(second)["epoch"] == 2 and load_checkpoint(first)["epoch"] == 1
    assert _sha(first) == first_bytes  # the first run's checkpoint is untouched
    assert sorted(p.name for p in (workdir / "lightning_logs/step_lr").iterdir()) == ["version_0", "version_1"]
    assert not list(workdir.rglob("last-v*.ckpt"))
    assert "last checkpoint (the latest epoch): checkpoints/step_lr/version_1/last.ckpt" in capsys.readouterr().out

    tested = run("test", "step_lr", "--ckpt_path", "last")  # the newest run's last.ckpt
    assert Path(tested.config.test.ckpt_path) == Path("checkpoints/step_lr/version_1/last.ckpt")
    best = run("test", "step_lr", "--ckpt_path", "best")  # the best of the newest run
    assert Path(best.config.test.ckpt_path).parent == Path("checkpoints/step_lr/version_1")
    assert Path(best.config.test.ckpt_path).name.startswith("epoch")


@pytest.mark.slow
def test_sigterm_to_a_second_run_never_touches_the_first_runs_last_ckpt(workdir: Path) -> None:
    cli_process("fit", *SHUFFLED_DROPOUT, "--run_name", "run", "--trainer.max_epochs", "2", cwd=workdir)
    finished = workdir / "checkpoints/run/version_0/last.ckpt"
    before = _sha(finished)
    stopped = cli_process(
        "fit", *SHUFFLED_DROPOUT, "--run_name", "run",
        "--trainer.callbacks+=tests.helpers.SigtermAtStep", "--trainer.callbacks.step", "3",
        cwd=workdir, check_exit=143,
    )
    assert "saved checkpoints/run/version_1/last.ckpt" in stopped.stderr
    assert _sha(finished) == before
    assert load_checkpoint(workdir / "checkpoints/run/version_1/last.ckpt")["global_step"] == 3


def test_a_resume_from_a_moved_run_folder_writes_a_last_ckpt_that_is_the_latest(workdir: Path) -> None:
    run("fit", "step_lr", "--trainer.max_epochs", "2")
    shutil.move(workdir / "checkpoints/step_lr/version_0", workdir / "moved")
    run("fit", "step_lr", "--trainer.max_epochs", "4", "--ckpt_path", "moved/last.ckpt")
    resumed = load_checkpoint(workdir / "checkpoints/step_lr/version_1/last.ckpt")
    assert resumed["epoch"] == 3 and resumed["global_step"] == 4  # one step per epoch, four epochs
    assert load_checkpoint(workdir / "moved/last.ckpt")["epoch"] == 1  # the source is never written


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folders(workdir: Path, capsys) -> None:
    run("fit", "step_lr", "--trainer.max_epochs", "1")
    with pytest.raises(SystemExit):  # fails in the first step, after the logger and the run's config.yaml exist
        run("fit", "step_lr", "--trainer.callbacks+=tests.helpers.PoisonWeightsAtStep", "--trainer.callbacks.step", "0")
    assert "the training loss became nan at step 1" in capsys.readouterr().err
    assert sorted(p.name for p in (workdir / "lightning_logs/step_lr").iterdir()) == ["version_0"]
    assert sorted(p.name for p in (workdir / "checkpoints/step_lr").iterdir()) == ["version_0"]


@pytest.mark.parametrize("into", ["a folder of its own", "its own folder"])
def test_a_checkpoint_of_the_old_format_resumes_with_a_last_ckpt_that_is_the_latest(workdir: Path, into: str) -> None:
    """Written before last.ckpt had a callback of its own (its best-checkpoint state is under another key): it
    resumes, and nowhere does a stale last.ckpt stay beside a new last-v1.ckpt."""
    old = workdir / "old"
    old.mkdir()
    shutil.copy(FIXTURES / "regression_98c0fa1.ckpt", old / "last.ckpt")
    folder = ["--checkpoint.dirpath", "old"] if into == "its own folder" else []
    run("fit", "regression", "--trainer.max_epochs", "3", "--ckpt_path", "old/last.ckpt", *folder)
    resumed = old if folder else workdir / "checkpoints/regression/version_0"
    last = load_checkpoint(resumed / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 300)  # two epochs of 100 steps in the checkpoint, and one more
    assert not list(workdir.rglob("last-v*.ckpt"))


def test_a_version_another_run_claimed_at_the_same_moment_is_left_to_it(workdir: Path, monkeypatch) -> None:
    """Between finding the next free N and creating its folders, another run may take N: this one takes N + 1 (the
    claim is the mkdir, which fails where the folder exists) and never writes into the other's folders."""
    from gpu_lessons import run_folders

    def another_run_starts_at_the_same_moment(*roots):
        (workdir / "lightning_logs/step_lr/version_0").mkdir(parents=True)
        (workdir / "lightning_logs/step_lr/version_0/events.other").write_text("the other run's")
        return 0

    monkeypatch.setattr(run_folders, "next_version", another_run_starts_at_the_same_moment)
    cli = run("fit", "step_lr", "--trainer.max_epochs", "1")
    assert Path(cli.trainer.checkpoint_callback.dirpath).name == "version_1"
    assert Path(cli.trainer.logger.log_dir).name == "version_1"
    assert sorted(p.name for p in (workdir / "lightning_logs/step_lr/version_0").iterdir()) == ["events.other"]
    assert sorted(p.name for p in (workdir / "checkpoints/step_lr").iterdir()) == ["version_1"]  # its claim of 0 undone


@pytest.mark.slow
def test_fits_started_together_each_get_their_own_version(workdir: Path) -> None:
    args = ["fit", "--config", str(REPO / "configs/step_lr.yaml"), "--trainer.max_epochs", "1",
                "--trainer.enable_progress_bar", "false", "--pictures.enabled", "false"]
    processes = [
        subprocess.Popen([sys.executable, "-m", "gpu_lessons", *args], cwd=workdir, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
        for _ in range(3)
    ]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    for root in ("checkpoints/step_lr", "lightning_logs/step_lr"):
        assert sorted(p.name for p in (workdir / root).iterdir()) == ["version_0", "version_1", "version_2"]
    for n in range(3):
        assert (workdir / f"checkpoints/step_lr/version_{n}/last.ckpt").is_file()
        assert len(list((workdir / f"lightning_logs/step_lr/version_{n}").glob("events.out.tfevents.*"))) == 1


def _fit_stopped(workdir: Path, signum: int, when: str, *args: str) -> tuple[int, str]:
    """``fit --config step_lr ARGS`` in a fresh process, sent ``signum`` once it writes the line ``when`` to stderr:
    its exit code and the rest of its stderr."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gpu_lessons", "fit", "--config", str(REPO / "configs/step_lr.yaml"), *args],
        cwd=workdir, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal (a background job ignores it)
    )
    assert process.stderr is not None
    for line in process.stderr:
        if line == f"{when}\n":
            break
    process.send_signal(signum)
    code = process.wait(timeout=60)
    return code, process.stderr.read()


def test_sigterm_during_start_up_exits_143_with_its_line_and_leaves_no_folders(workdir: Path) -> None:
    """Before any stage runs (the callbacks are being built), SIGTERM is no silent death by signal 15."""
    code, err = _fit_stopped(
        workdir, signal.SIGTERM, "building slowly", "--trainer.callbacks+=tests.helpers.SlowToBuild",
        "--trainer.callbacks.seconds", "60",
    )
    assert code == 143
    assert "stopped by SIGTERM" in err
    assert sorted(p.name for p in workdir.iterdir()) == []


@pytest.mark.parametrize("epoch", [0, 2])
def test_ctrl_c_exits_130_saying_what_was_kept_and_how_to_resume(workdir: Path, epoch: int) -> None:
    code, err = _fit_stopped(
        workdir, signal.SIGINT, f"epoch {epoch} started", "--pictures.enabled", "false",
        "--trainer.callbacks+=tests.helpers.PauseAtEpochStart", "--trainer.callbacks.epoch", str(epoch),
        "--trainer.callbacks.seconds", "60",
    )
    assert code == 130
    assert "stopped by Ctrl-C" in err and "Traceback" not in err
    if epoch == 0:
        assert "no epoch had finished, so no checkpoint was kept" in err
    else:
        last = "checkpoints/step_lr/version_0/last.ckpt"
        assert f"on Ctrl-C, kept {last} (the latest finished epoch); resume with `fit --ckpt_path {last}`" in err
        assert load_checkpoint(workdir / last)["epoch"] == epoch - 1


def test_logs_in_the_checkpoint_folder_share_one_claimed_version(workdir: Path) -> None:
    """The logger's root can be the checkpoints' own (save_dir checkpoints): one folder to claim, not two that always
    clash (the claim once looped for ever there)."""
    cli = run("fit", "step_lr", "--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", "checkpoints")
    assert Path(cli.trainer.checkpoint_callback.dirpath).resolve() == Path(cli.trainer.logger.log_dir).resolve()
    assert sorted(p.name for p in (workdir / "checkpoints/step_lr").iterdir()) == ["version_0"]


def test_a_file_where_the_log_folder_goes_is_one_error_line(workdir: Path, capsys) -> None:
    (workdir / "lightning_logs").mkdir()
    (workdir / "lightning_logs/step_lr").write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "step_lr", "--trainer.max_epochs", "1")
    assert exit_info.value.code == 2
    assert "lightning_logs/step_lr is a file, not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in workdir.iterdir()) == ["lightning_logs"]  # no checkpoints/ left behind


def test_a_failed_run_never_removes_a_folder_another_run_claimed_meanwhile(workdir: Path, monkeypatch) -> None:
    """A run that fails before saving removes only what it made: a parent folder it created is removed only while
    empty, so another run's version folder made inside it meanwhile stays."""
    from gpu_lessons.run_folders import RunFolders

    folders = RunFolders()
    folders._note_new(workdir / "checkpoints/cnn/mine")
    (workdir / "checkpoints/cnn/mine").mkdir(parents=True)
    (workdir / "checkpoints/cnn/version_0").mkdir()  # another run's claim, not yet saved into
    folders.remove_if_nothing_saved()
    assert sorted(p.name for p in (workdir / "checkpoints/cnn").iterdir()) == ["version_0"]
