"""What the CLI adds to Lightning's command line: its help, its own options, and each callback and plugin it adds to
the trainer as a config key with a visible default (``null`` switches one off)."""

from __future__ import annotations

from typing import Optional

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser

from gpu_lessons.callbacks import CudaRuntimeCheckOnCpu, FiniteLossGuard, RandomStates
from gpu_lessons.checkpointing import CheckpointOnSigterm, ConfinedCheckpoint, LessonCheckpoint
from gpu_lessons.pictures import LessonPictures
from gpu_lessons.predictions import PredictionPrinter
from gpu_lessons.progress import output_is_a_terminal

# The subcommands beside Lightning's: name -> (the module whose main(argv, prog) runs it, what it does).
TOOLS = {
    "lessons": ("gpu_lessons.lessons", "the lessons and what each reaches (--copy NAME writes NAME.yaml to edit)"),
    "course": ("gpu_lessons.course", "a lesson's plain PyTorch loop, as the course writes it (--compare: against Lightning)"),
    "export": ("gpu_lessons.export", "a checkpoint's network as plain weights, for torch alone"),
    "pictures": ("gpu_lessons.pictures", "runs' learning curves side by side"),
    "doctor": ("gpu_lessons.doctor", "is the GPU usable, and how fast is it?"),
}
# Lightning's own help line for a subcommand stops at its docstring's first line
LIGHTNING_SUBCOMMANDS = {
    "fit": "train a lesson (resume with --ckpt_path)",
    "validate": "one pass over the validation set",
    "test": "one pass over the test set, with a checkpoint (--ckpt_path last)",
    "predict": "predictions for the data's predict inputs or your pictures",
}
DESCRIPTION = (
    "gpu_lessons: a beginner's GPU/PyTorch course as PyTorch Lightning lessons. Train one with "
    "`gpu-lessons fit --config cnn` (a shipped lesson, or your own YAML file), then test or predict with "
    "`--ckpt_path last`; `gpu-lessons fit --help` lists every option. Lightning's subcommands: "
    + "; ".join(f"`{name}`: {what}" for name, what in LIGHTNING_SUBCOMMANDS.items())
    + ". The others: "
    + "; ".join(f"`{name}`: {what}" for name, (_, what) in TOOLS.items())
    + " (`gpu-lessons NAME --help` for each); `gpu-lessons --version` prints the versions. Exit codes: 0 done, "
    "1 failed (a NaN loss, a full disk), 2 bad input, 130 stopped by Ctrl-C, 143 stopped by SIGTERM."
)
# The callbacks the CLI adds beside checkpoint, last_checkpoint and pictures: a top-level key each, with the class it
# may be (also its default, but for lr_monitor's and the progress bar's, set in add_lesson_arguments) and its help.
CALLBACKS = {
    "sigterm_checkpoint": (CheckpointOnSigterm, "fit: on SIGTERM, save last.ckpt at the exact step, then exit 143."),
    "finite_loss_guard": (FiniteLossGuard, "fit: stop at the first NaN or infinite training loss, naming its step."),
    "random_states": (RandomStates, "Keep the random-number states in checkpoints, so that a resume is exact."),
    "cpu_cuda_check": (
        CudaRuntimeCheckOnCpu,
        "CPU runs: torch's GPU check (Adam's, every step) asks the CUDA runtime once, not NVML every time.",
    ),
    "lr_monitor": (LearningRateMonitor, "Log the learning rate (left out where trainer.logger is false)."),
    "progress_bar": (
        ProgressBar,
        "A bar redrawn every 10 steps in a terminal, otherwise a line per epoch (left out where "
        "trainer.enable_progress_bar is false).",
    ),
    # after the bar, so that the bar has closed its line before the predictions are printed
    "predictions": (PredictionPrinter, "predict: print the predictions (and write --output)."),
}


def add_lesson_arguments(parser: LightningArgumentParser) -> None:
    """Add the CLI's own options and its callbacks, each a config key with its default (so ``--print_config`` and a
    run's ``config.yaml`` show them)."""
    parser.add_argument(
        "--run_name",
        type=Optional[str],
        default=None,
        help="Names the run's folders, checkpoints/<run_name>/version_N/ and lightning_logs/<run_name>/version_N/. "
        "Default: the first config file's name (cnn for configs/cnn.yaml).",
    )
    parser.add_argument(
        "--strict_accelerator",
        type=bool,
        default=False,
        help="With accelerator gpu/cuda where CUDA is not usable: fail instead of falling back to the CPU.",
    )
    parser.add_argument(
        "--init_weights",
        type=Optional[str],
        default=None,
        help="fit only: start from this checkpoint's weights (or last/best of the run), with a new optimizer, schedule "
        "and epoch count: fine-tuning. --ckpt_path instead resumes that run where it stopped.",
    )
    parser.add_argument(
        "--output",
        type=Optional[str],
        default=None,
        help="predict only: also write the predictions to this CSV file (never overwritten).",
    )
    # checkpoint (the best on val/loss), last_checkpoint (last.ckpt, every epoch) and pictures are always built:
    # save_top_k 0 or enabled false switch them off
    parser.add_lightning_class_args(LessonCheckpoint, "checkpoint")
    parser.add_lightning_class_args(ConfinedCheckpoint, "last_checkpoint")
    parser.add_lightning_class_args(LessonPictures, "pictures")
    for key, (base, help_text) in CALLBACKS.items():
        parser.add_subclass_arguments(base, key, required=False, help=f"{help_text} null: none.")
    parser.set_defaults(
        {
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.filename": "epoch{epoch:03d}-val_loss{val/loss:.4f}",
            "checkpoint.auto_insert_metric_name": False,
            # the latest state, overwritten at every training epoch's end (Lightning 2.6's save_last=True
            # writes last.ckpt only beside a new best, so it would fall behind once val/loss gets worse)
            "last_checkpoint.filename": ModelCheckpoint.CHECKPOINT_NAME_LAST,
            "last_checkpoint.monitor": None,
            "last_checkpoint.save_top_k": 1,
            "last_checkpoint.enable_version_counter": False,
            "last_checkpoint.save_on_train_epoch_end": True,
            **{key: {"class_path": f"{base.__module__}.{base.__name__}"} for key, (base, _) in CALLBACKS.items()},
            "lr_monitor": {
                "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                "init_args": {"logging_interval": "epoch"},
            },
            # a bar's redraw costs ~0.7 ms, a small model's step on a GPU; in a log file every redraw would stay
            "progress_bar": (
                {"class_path": "lightning.pytorch.callbacks.TQDMProgressBar", "init_args": {"refresh_rate": 10}}
                if output_is_a_terminal()
                else {"class_path": "gpu_lessons.progress.EpochLines"}
            ),
            "trainer.logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "lightning_logs"},
            },
            # atomic saves, weights-only loads (a list: --trainer.plugins+=... adds to it)
            "trainer.plugins": [{"class_path": "gpu_lessons.checkpointing.AtomicCheckpointIO"}],
        }
    )
