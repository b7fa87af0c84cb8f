"""``python -m gpu_lessons {fit,validate,test,predict} --config configs/<lesson>.yaml``.

A LightningCLI in subclass mode: a config picks any lesson (``model.class_path``) and any DataModule
(``data.class_path``). On top of Lightning's CLI it adds what a learner on a laptop or a GPU box needs:

* ``accelerator: gpu`` falls back to the CPU, with one line saying why, where CUDA is not usable
  (``--strict_accelerator true`` makes that an error instead);
* checkpoints in ``checkpoints/<run_name>/version_N/`` (best on ``val/loss`` and ``last.ckpt``), TensorBoard logs in
  ``lightning_logs/<run_name>/version_N/`` with the run's ``config.yaml``, and the learning rate logged;
* every callback and plugin it adds is a default of the config (``--print_config`` shows them; ``null`` or their
  own switch turns one off), so a run's ``config.yaml`` runs it again;
* ``predict`` prints readable predictions (``--output FILE.csv`` also writes them as CSV);
* user errors (a missing checkpoint or dataset, CUDA required but absent) end in one ``error:`` line and exit
  code 2, not a traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shutil
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from gpu_lessons import __version__
from gpu_lessons.callbacks import CudaRuntimeCheckOnCpu, FiniteLossGuard, RandomStates
from gpu_lessons.checkpointing import CheckpointOnSigterm, ConfinedCheckpoint, LessonCheckpoint
from gpu_lessons.safe_checkpoints import check_resumable, check_weights_fit, checked_hyperparameters, load_checkpoint
from gpu_lessons.cuda import cuda_unavailable_reason
from gpu_lessons.errors import CheckpointError, UserError, exit_code, imported_class, one_line, preview
from gpu_lessons.lessons import config_path
from gpu_lessons.models.base import Lesson
from gpu_lessons.pictures import LessonPictures
from gpu_lessons.predictions import PredictionPrinter
from gpu_lessons.progress import output_is_a_terminal

# The subcommands beside Lightning's fit, validate, test and predict: name -> (the module whose
# main(argv, prog) runs it, what it does). Each reports errors like the others (gpu_lessons.errors).
_TOOLS = {
    "lessons": ("gpu_lessons.lessons", "the lessons and what each reaches (--copy NAME writes NAME.yaml to edit)"),
    "export": ("gpu_lessons.export", "a checkpoint's network as plain weights, for torch alone"),
    "pictures": ("gpu_lessons.pictures", "runs' learning curves side by side"),
    "doctor": ("gpu_lessons.doctor", "is the GPU usable, and how fast is it?"),
}
_DESCRIPTION = (
    "gpu_lessons: a beginner's GPU/PyTorch course as PyTorch Lightning lessons. Train one with "
    "`gpu-lessons fit --config cnn` (a shipped lesson, or your own YAML file), then test or predict with "
    "`--ckpt_path last`; `gpu-lessons fit --help` lists every option. The other subcommands: "
    + "; ".join(f"`{name}`: {what}" for name, (_, what) in _TOOLS.items())
    + " (`gpu-lessons NAME --help` for each). Exit codes: 0 done, 1 failed (a NaN loss, a full disk), 2 bad input, "
    "143 stopped by SIGTERM."
)
_GPU_ACCELERATORS = ("gpu", "cuda")
_LOGGER_DEFAULT_NAME = "lightning_logs"  # TensorBoardLogger's and CSVLogger's own default for ``name``
_LIGHTNING_CKPT_ALIASES = ("last", "best", "hpc", "registry")
_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"version_(\d+)")
# The callbacks the CLI adds beside checkpoint, last_checkpoint and pictures: a top-level key each, with the class
# it may be, its default (set in add_arguments_to_parser, so --print_config and config.yaml show it) and its help;
# null switches one off. The progress bar's default depends on the output: set beside them.
_CALLBACKS = {
    "sigterm_checkpoint": (
        CheckpointOnSigterm,
        {"class_path": "gpu_lessons.checkpointing.CheckpointOnSigterm"},
        "fit: on SIGTERM, save last.ckpt at the exact step, then exit 143.",
    ),
    "finite_loss_guard": (
        FiniteLossGuard,
        {"class_path": "gpu_lessons.callbacks.FiniteLossGuard"},
        "fit: stop at the first NaN or infinite training loss, naming its step.",
    ),
    "random_states": (
        RandomStates,
        {"class_path": "gpu_lessons.callbacks.RandomStates"},
        "Keep the random-number states in checkpoints, so that a resume is exact.",
    ),
    "cpu_cuda_check": (
        CudaRuntimeCheckOnCpu,
        {"class_path": "gpu_lessons.callbacks.CudaRuntimeCheckOnCpu"},
        "CPU runs: torch's GPU check (Adam makes it every step) asks the CUDA runtime once, not NVML every time.",
    ),
    "lr_monitor": (
        LearningRateMonitor,
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "epoch"}},
        "Log the learning rate (left out where trainer.logger is false).",
    ),
    "progress_bar": (
        ProgressBar,
        None,
        "A bar redrawn every 10 steps in a terminal, otherwise a line per epoch (left out where "
        "trainer.enable_progress_bar is false).",
    ),
    "predictions": (  # after the bar, so that the bar has closed its line before the predictions are printed
        PredictionPrinter,
        {"class_path": "gpu_lessons.predictions.PredictionPrinter"},
        "predict: print the predictions (and write --output).",
    ),
}


class NonOverwritingSaveConfigCallback(SaveConfigCallback):
    """Saves the run's config beside its logs; if a ``config.yaml`` is already there, writes ``config-N.yaml``.

    Args:
        run_folders: Config keys that hold the folders the CLI picked for this run (``checkpoint.dirpath``, the
            logger's ``version``); they are saved unset, so that ``fit --config .../config.yaml`` runs the same
            again, into the next folders, instead of being refused by this run's checkpoints.
    """

    def __init__(self, *args: Any, run_folders: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run_folders = run_folders

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if stage == "predict":  # predictions are printed, not logged: no log folder, no config to keep
            return
        log_dir = trainer.log_dir
        if log_dir is not None:
            stem, n = "config", 0
            while os.path.isfile(os.path.join(log_dir, self.config_filename)):
                n += 1
                self.config_filename = f"{stem}-{n}.yaml"
        if self.run_folders:
            self.config = self.config.clone()
            for key in self.run_folders:
                self.config[key] = None
        super().setup(trainer, pl_module, stage)


class LessonCLI(LightningCLI):
    """LightningCLI for the lessons; see the module docstring for what it adds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._run_folders: list[str] = []  # see NonOverwritingSaveConfigCallback; filled by before_instantiate_classes
        saver = kwargs.setdefault("save_config_callback", NonOverwritingSaveConfigCallback)
        if saver is NonOverwritingSaveConfigCallback:
            kwargs.setdefault("save_config_kwargs", {"run_folders": self._run_folders})
        kwargs.setdefault("seed_everything_default", 42)
        # parse errors come back as exceptions, for cli_main to report in one line instead of the usage block
        kwargs.setdefault("parser_kwargs", {"exit_on_error": False, "prog": "gpu-lessons", "description": _DESCRIPTION})
        self._new_folders: list[Path] = []  # the run's folders that did not exist before it
        self._new_parents: list[Path] = []  # folders above claimed version folders that did not exist before it
        try:
            super().__init__(Lesson, LightningDataModule, *args, subclass_mode_model=True, subclass_mode_data=True, **kwargs)
        except BaseException:
            self._remove_folders_of_a_run_that_saved_nothing()
            raise

    def _remove_folders_of_a_run_that_saved_nothing(self) -> None:
        """A run that fails before its first checkpoint leaves no empty version folders behind (a run that saved a
        checkpoint keeps its folders and logs: they show how far it got)."""
        if any(folder.is_dir() and any(folder.rglob("*.ckpt")) for folder in self._new_folders):
            return
        for folder in self._new_folders:
            shutil.rmtree(folder, ignore_errors=True)
        for folder in sorted(set(self._new_parents), key=lambda path: len(path.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:  # not empty: another run's folders are in it
                pass

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name",
            type=Optional[str],
            default=None,
            help="Names the run's folders: each fit writes checkpoints/<run_name>/version_N/ and "
            "lightning_logs/<run_name>/version_N/ (the next N). Default: the first config file's name (cnn for "
            "configs/cnn.yaml).",
        )
        parser.add_argument(
            "--strict_accelerator",
            type=bool,
            default=False,
            help="With accelerator gpu/cuda on a machine where CUDA is not usable: fail instead of falling back "
            "to the CPU.",
        )
        parser.add_argument(
            "--init_weights",
            type=Optional[str],
            default=None,
            help="fit only: start from this checkpoint's weights (or last/best of the run), with a new optimizer, "
            "schedule and epoch count: fine-tuning, e.g. the MNIST CNN on your own pictures. --ckpt_path instead "
            "resumes that run where it stopped.",
        )
        parser.add_argument(
            "--output",
            type=Optional[str],
            default=None,
            help="predict only: also write the predictions to this CSV file (an existing file is never overwritten).",
        )
        # Everything the CLI adds to the trainer is a default here, shown by --print_config and kept in config.yaml.
        # checkpoint (the best on val/loss), last_checkpoint (last.ckpt, every epoch) and pictures are always built:
        # save_top_k 0 or enabled false switch them off. The others may be null, or another class.
        parser.add_lightning_class_args(LessonCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ConfinedCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(LessonPictures, "pictures")
        for key, (base, _, help_text) in _CALLBACKS.items():
            parser.add_subclass_arguments(base, key, required=False, help=f"{help_text} null: none.")
        # Redrawing a bar every step costs ~0.7 ms of Python, as much as a small model's step on a GPU; where output
        # is not a terminal, every redraw would stay in the log: a line per epoch instead.
        if output_is_a_terminal():
            progress_bar = {
                "class_path": "lightning.pytorch.callbacks.TQDMProgressBar",
                "init_args": {"refresh_rate": 10},
            }
        else:
            progress_bar = {"class_path": "gpu_lessons.progress.EpochLines"}
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
                "last_checkpoint.save_on_train_epoch_end": True,
                "last_checkpoint.enable_version_counter": False,
                **{key: default for key, (_, default, _) in _CALLBACKS.items()},
                "progress_bar": progress_bar,
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "lightning_logs"},
                },
                # atomic saves, weights-only loads (a list: --trainer.plugins+=... adds to it)
                "trainer.plugins": [{"class_path": "gpu_lessons.checkpointing.AtomicCheckpointIO"}],
            }
        )

    def before_instantiate_classes(self) -> None:
        """Resolve the CUDA fallback, the run's folders and the callbacks that follow from other settings, before
        anything is built."""
        config = _subcommand_config(self.config, self.subcommand)
        if self.subcommand is not None:
            config.ckpt_path = self.ckpt_path  # checked and held back by parse_arguments; the trainer reads it
        if config.output is not None and self.subcommand != "predict":
            raise UserError("--output is for predict: it writes the predictions to a CSV file")
        _check_trainer_counts(config.trainer)
        self._resolve_accelerator(config)
        logger = config.trainer.logger
        if isinstance(logger, Namespace) and logger.init_args.get("name") == _LOGGER_DEFAULT_NAME:
            logger.init_args.name = config.run_name
        if self.subcommand == "predict" and _is_default_logger(logger):
            config.trainer.logger = False  # predictions are printed (and --output written): nothing to log
        if config.trainer.logger in (False, []):
            config.lr_monitor = None  # it has nowhere to log to (and would fail the fit)
        if config.trainer.enable_progress_bar is False:
            config.progress_bar = None
        elif config.progress_bar is None and config.trainer.enable_progress_bar is None:
            config.trainer.enable_progress_bar = False  # null means no bar, not Lightning's own (redrawn every step)
        if config.output is not None and isinstance(config.predictions, Namespace):
            config.predictions.init_args.output = config.output
        if self.subcommand == "fit":
            self._place_fit_checkpoints(config)
        elif config.checkpoint.dirpath is None:  # only fit writes checkpoints; this names the folder of the one read
            ckpt_path = config.get("ckpt_path")
            config.checkpoint.dirpath = str(Path(ckpt_path).parent) if ckpt_path else os.path.join("checkpoints", config.run_name)
            self._run_folders.append("checkpoint.dirpath")
        if config.last_checkpoint.dirpath is None:
            config.last_checkpoint.dirpath = config.checkpoint.dirpath
            self._run_folders.append("last_checkpoint.dirpath")
        elif os.path.abspath(config.last_checkpoint.dirpath) != os.path.abspath(config.checkpoint.dirpath):
            # one folder per run is what keeps runs apart, SIGTERM saves beside them and --ckpt_path last finds them
            raise UserError(
                "last_checkpoint.dirpath must be the run's checkpoint folder; choose the folder with --checkpoint.dirpath"
            )

    def _place_fit_checkpoints(self, config: Namespace) -> None:
        """Every fit writes into folders of its own: ``checkpoints/<run>/version_N/`` beside
        ``lightning_logs/<run>/version_N/``, N one past the highest in either, so its ``last.ckpt`` is its own (a
        resume is a new fit, and gets the next N). A folder that already holds checkpoints is only written to by a
        resume from one of them (``--checkpoint.dirpath`` or a fixed logger version)."""
        logger = config.trainer.logger
        logger_args = logger.init_args if isinstance(logger, Namespace) and "version" in logger.init_args else None
        if config.checkpoint.dirpath is None:
            run_root = Path("checkpoints", config.run_name)
            version = None if logger_args is None else logger_args.version
            if version is None:
                log_root = None if logger_args is None else Path(logger_args.save_dir, logger_args.get("name") or "")
                _ensure_writable(run_root, "checkpoints")
                version = self._claim_version(run_root, log_root)
                if logger_args is not None:
                    logger_args.version = version
                    self._run_folders.append("trainer.logger.init_args.version")
            config.checkpoint.dirpath = str(run_root / _version_folder(version))
            self._run_folders.append("checkpoint.dirpath")
        folder = Path(config.checkpoint.dirpath)
        _ensure_writable(folder, "checkpoints")
        existing = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
        resumes_here = config.ckpt_path is not None and Path(config.ckpt_path).resolve().parent == folder.resolve()
        if existing and not resumes_here:
            raise UserError(
                f"{folder} already holds another run's checkpoints ({', '.join(existing[:3])}); a run never writes "
                "over them: leave out --checkpoint.dirpath (each fit gets checkpoints/<run>/version_N/), choose "
                "another folder, or resume with --ckpt_path from that folder"
            )
        for new in (folder, self._log_folder(config)):
            if new is not None:
                self._note_new(new)

    def _note_new(self, folder: Path) -> None:
        """Remember the topmost folder this run will create for ``folder`` (``checkpoints/<run>`` on its first run),
        to remove if it fails before saving anything."""
        while not folder.parent.exists() and folder.parent != folder.parent.parent:
            folder = folder.parent
        if not folder.exists() and folder not in self._new_folders:
            self._new_folders.append(folder)

    def _claim_version(self, *roots: Optional[Path]) -> int:
        """The next N whose ``version_N`` is free under every root, claimed by creating those folders: ``mkdir``
        fails where a run started at the same moment took N first, and this run then tries N + 1."""
        version = _next_version(*roots)
        while True:
            made: list[Path] = []
            try:
                for root in filter(None, roots):
                    claimed = root / _version_folder(version)
                    # parents another run may share: removed on failure only while empty (rmdir, never rmtree)
                    self._new_parents += [folder for folder in (root, *root.parents) if not folder.exists()]
                    root.mkdir(parents=True, exist_ok=True)
                    claimed.mkdir()
                    made.append(claimed)
                self._new_folders += made
                return version
            except FileExistsError:
                for claimed in made:
                    claimed.rmdir()
                version += 1

    @staticmethod
    def _log_folder(config: Namespace) -> Optional[Path]:
        logger = config.trainer.logger
        if not isinstance(logger, Namespace) or logger.init_args.get("version") is None:
            return None
        args = logger.init_args
        return Path(args.save_dir, args.get("name") or "", _version_folder(args.version))

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse; then read ``--ckpt_path`` once and check it before anything is built: it exists, loads with
        ``weights_only=True``, was written by the configured lesson, and its hyperparameters are plain values for that
        lesson's arguments (:func:`~gpu_lessons.safe_checkpoints.checked_hyperparameters`: a checkpoint is someone else's
        data, and nothing in it may choose code). The checked values are set on the config's lesson.

        The path itself is held back (``self.ckpt_path``) until :meth:`before_instantiate_classes`: LightningCLI's own
        merge of a checkpoint's hyperparameters, which runs in between, would read the file again and hand its
        ``class_path`` to jsonargparse to import; with no ``ckpt_path`` in the config, it has nothing to read."""
        if args is None:  # the command line (LightningCLI warns about ``args`` given beside ``sys.argv``)
            self.config = parser.parse_args(_with_config_files(sys.argv[1:]))
        else:
            super().parse_arguments(parser, _with_config_files(args))
        self.checkpoint: Optional[dict[str, Any]] = None
        self.ckpt_path: Optional[str] = None
        self.initial_weights: Optional[dict[str, Any]] = None
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else self.config
        config.run_name = _checked_run_name(config.run_name or _default_run_name(config))
        if subcommand and config.get("weights_only") is None:
            # Lightning's own read of the checkpoint is then weights-only whatever the plugins or the environment
            # (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD) say; the run's config.yaml records it. False is refused when read.
            config.weights_only = True
        if config.get("init_weights"):
            if subcommand not in ("fit", None):  # None: run=False, the caller drives the trainer
                raise UserError("--init_weights is for fit: it starts training from a checkpoint's weights")
            if config.get("ckpt_path"):
                raise UserError(
                    "give --ckpt_path (resume that run: its optimizer, schedule and epoch count) or --init_weights "
                    "(train anew from its weights, e.g. on other data), not both"
                )
            config.init_weights = self._resolved(config.init_weights, config, "--init_weights")
            self.initial_weights, _ = self._checked_checkpoint(config.init_weights, config)
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        self.ckpt_path, config.ckpt_path = self._resolved(ckpt_path, config), None
        self.checkpoint, hparams = self._checked_checkpoint(self.ckpt_path, config)
        _set_model_settings(config.model.init_args, hparams)
        if subcommand == "fit":
            _say_how_the_data_differs(self.checkpoint, config, self.ckpt_path)

    @staticmethod
    def _resolved(path: str, config: Namespace, flag: str = "--ckpt_path") -> str:
        return str(_checkpoint_alias(path, config, flag)) if path in _LIGHTNING_CKPT_ALIASES else path

    @staticmethod
    def _checked_checkpoint(path: str, config: Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
        """The checkpoint at ``path`` and its checked hyperparameters, if the config's lesson wrote it (or it records
        no lesson, saved from Python: its values are then checked against the config's)."""
        checkpoint = load_checkpoint(path)
        configured = imported_class(config.model.class_path) or Lesson  # already imported by parsing
        _, hparams = checked_hyperparameters(checkpoint, configured, path)
        return checkpoint, hparams

    def after_fit(self) -> None:
        """A short summary: the last epoch's metrics, the best validation metric, and where this run's checkpoints
        and pictures are (the paths to give ``test``/``predict``/a resume)."""
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        best = {k: v for k, v in metrics.items() if k.endswith("_best")}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()) if k not in best)
        if shown:
            print(f"after {trainer.current_epoch} epochs: {shown}")
        for key, value in best.items():
            print(f"best {key.removesuffix('_best')} of the run: {value:.4g}")
        built = _subcommand_config(self.config_init, self.subcommand)
        checkpoint, latest, pictures = built.checkpoint, built.last_checkpoint, built.pictures
        if pictures.folder is not None and pictures.folder.is_dir():
            print(f"pictures: {_shown(str(pictures.folder))}/")
        if latest.best_model_path:  # with no monitor, its "best" is the latest save
            print(f"last checkpoint (the latest epoch): {_shown(latest.best_model_path)}")
        if checkpoint.best_model_path and checkpoint.best_model_score is not None:
            score = f"{checkpoint.monitor} {float(checkpoint.best_model_score):.4g}"
            print(f"best checkpoint ({score}): {_shown(checkpoint.best_model_path)}")

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a constructor's complaint about an argument (a ValueError, Lightning's
        MisconfigurationException, a missing package for ``accelerator: tpu``) is a user error."""
        try:
            super().instantiate_classes()
        except (ValueError, MisconfigurationException, ImportError) as error:
            if isinstance(error.__cause__, UserError):  # jsonargparse's wrapping of a constructor's own UserError
                raise error.__cause__ from None
            raise UserError(f"invalid configuration: {one_line(error)}") from None

    def after_instantiate_classes(self) -> None:
        """Checks that need the built lesson, before any data is read: the checkpoint monitor is a metric the lesson
        logs, and ``--ckpt_path`` holds this lesson's weights (and, to resume a fit, its optimizer's state)."""
        super().after_instantiate_classes()
        model, config = self.model, _subcommand_config(self.config, self.subcommand)
        monitor = config.checkpoint.monitor
        if isinstance(model, Lesson) and monitor is not None and monitor not in (*model.metric_names, "epoch", "step"):
            raise UserError(
                f"checkpoint.monitor {monitor!r} is not a metric {type(model).__name__} logs; "
                f"choose one of {', '.join(model.metric_names)}"
            )
        if self.initial_weights is not None:
            check_weights_fit(self.initial_weights, model, config.init_weights)
            model.load_state_dict(self.initial_weights["state_dict"])
            sys.stderr.write(
                f"gpu_lessons: training starts from the weights of {config.init_weights} (new optimizer, schedule and "
                "epochs)\n"
            )
        if self.checkpoint is not None:
            check_weights_fit(self.checkpoint, model, self.ckpt_path)
            if self.subcommand == "fit":
                check_resumable(self.checkpoint, model, self.ckpt_path, self.trainer.fit_loop.state_dict())

    def _resolve_accelerator(self, config: Namespace) -> None:
        accelerator = config.trainer.accelerator
        if not isinstance(accelerator, str) or accelerator.lower() not in _GPU_ACCELERATORS:
            return
        reason = cuda_unavailable_reason()
        if reason is None:
            return
        devices = config.trainer.devices
        if not _is_device_count(devices):
            raise UserError(f"trainer.devices {preview(devices)} is not a device count (>= 1, -1 for all, or auto) or a list of ids")
        if config.strict_accelerator:
            raise UserError(f"accelerator '{accelerator}' was requested with strict_accelerator, but {reason}")
        sys.stderr.write(
            f"gpu_lessons: accelerator '{accelerator}' -> 'cpu': {reason}. "
            "Pass --strict_accelerator true to make this an error.\n"
        )
        # One process: ``devices: 2`` meant two GPUs, not two CPU processes.
        config.trainer.accelerator, config.trainer.devices = "cpu", 1

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer, with the callbacks of :data:`_CALLBACKS` that are not null after its own."""
        config = _subcommand_config(self.config_init, self.subcommand)
        configured = config.trainer.get("callbacks") or []
        callbacks = [*(configured if isinstance(configured, list) else [configured])]
        for callback in callbacks:
            if isinstance(callback, ModelCheckpoint) and not isinstance(callback, ConfinedCheckpoint):
                # Lightning's own would act on the paths a checkpoint records (deleting them as they rotate out)
                raise UserError(
                    f"trainer.callbacks: use gpu_lessons.checkpointing.ConfinedCheckpoint (the same arguments) instead "
                    f"of {type(callback).__name__}: it restores from a checkpoint only files of its own folder"
                )
        callbacks += [config[key] for key in _CALLBACKS if config[key] is not None]
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)


def _ensure_writable(folder: Path, what: str) -> None:
    """Fail now, not after training, if ``folder`` cannot be created or written."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # exists() is False for a link that loops or points nowhere
            raise UserError(f"cannot write {what} to {folder}: {existing} is a symbolic link that loops or points nowhere")
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write {what} to {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} to {folder}: {existing} is not writable")


def _set_model_settings(init_args: Namespace, hparams: dict[str, Any]) -> None:
    """Set a checkpoint's checked hyperparameters on the config's lesson: where they differ from the config, they win
    (they describe the trained network), and a line says so."""
    changed = [
        f"{key} {preview(init_args.get(key))} -> {preview(value)}"
        for key, value in hparams.items()
        if key in init_args and init_args.get(key) != value
    ]
    for key, value in hparams.items():
        if key in init_args:
            init_args[key] = value
    if changed:
        sys.stderr.write(f"gpu_lessons: the checkpoint's model settings replace the config's: {', '.join(changed)}\n")


def _subcommand_config(config: Namespace, subcommand: Optional[str]) -> Namespace:
    """The part of a LightningCLI config for ``subcommand`` (all of it without subcommands, ``run=False``)."""
    return config[subcommand] if subcommand else config


# Where data is read from and how it is served, not what it is: a resume elsewhere may change them freely.
_DATA_LOCATION_KEYS = {"data_dir", "download", "num_workers", "on_device", "loader", "predict_images", "predict_x",
                       "predict_points", "eval_batch_size"}


def _say_how_the_data_differs(checkpoint: dict[str, Any], config: Namespace, ckpt_path: str) -> None:
    """A resume trains on with the checkpoint's network; if the config's data is other than the data it was trained
    on (noise labels instead of the pattern), say so in one line: that may be meant (fine-tuning), or a mix-up."""
    saved = checkpoint.get("datamodule_hyper_parameters")
    data = config.get("data")
    if not isinstance(saved, dict) or not isinstance(data, Namespace) or not isinstance(data.get("init_args"), Namespace):
        return
    if saved.get("_class_path") not in (None, data.class_path) and imported_class(str(saved.get("_class_path"))) is not (
        imported_class(data.class_path)
    ):
        sys.stderr.write(f"gpu_lessons: {ckpt_path} was trained on {preview(saved['_class_path'])}, this fit uses {data.class_path}\n")
        return
    now = data.init_args
    changes = [
        f"{key} {preview(value)} -> {preview(now.get(key))}"
        for key, value in saved.items()
        if isinstance(key, str) and not key.startswith("_") and key not in _DATA_LOCATION_KEYS
        and key in now and now.get(key) != value
    ]
    if changes:
        sys.stderr.write(f"gpu_lessons: the data differs from what {ckpt_path} was trained on: {', '.join(changes)}\n")


def _is_default_logger(logger: Any) -> bool:
    return (
        isinstance(logger, Namespace)
        and str(logger.get("class_path", "")).endswith("TensorBoardLogger")
        and logger.init_args.get("save_dir") == "lightning_logs"
    )


def _with_config_files(args: Any) -> Any:
    """``args`` with each ``--config``/``-c`` value resolved by :func:`_config_file`."""
    if not isinstance(args, (list, tuple)):
        return args
    args = list(args)
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args) and isinstance(args[i + 1], str):
            args[i + 1] = _config_file(args[i + 1])
        elif isinstance(arg, str) and arg.startswith("--config="):
            args[i] = "--config=" + _config_file(arg.split("=", 1)[1])
    return args


def _config_file(value: str) -> str:
    """A shipped lesson's name (``cnn``) becomes that lesson's config file (:func:`~gpu_lessons.lessons.config_path`:
    a real file always wins). A file that is not UTF-8 text (a binary file given by mistake) is named in one line;
    jsonargparse would fail on it with a UnicodeDecodeError traceback."""
    value = config_path(value)
    if os.path.isfile(value):
        if os.path.getsize(value) > MAX_CONFIG_BYTES:
            raise UserError(f"--config {value} is {os.path.getsize(value):,} bytes, more than a config's {MAX_CONFIG_BYTES:,}")
        try:
            text = Path(value).read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise UserError(f"--config {value} is not a YAML text file (byte {error.start} is not UTF-8)") from None
        _check_config_expansion(text, value)
    return value


MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_VALUES = 100_000  # a lesson's config has about 50; aliases count at every use, as parsing expands them


def _check_config_expansion(text: str, name: str) -> None:
    """Refuse a config that expands to more than :data:`MAX_CONFIG_VALUES` values before it is parsed: YAML
    aliases of aliases ("billion laughs") make a few lines into gigabytes. A file that is not valid YAML is left
    to the parser's own message."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return
    pending, count = [root] if root is not None else [], 0
    while pending:
        node = pending.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise UserError(f"--config {name} expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases count at every use)")
        if isinstance(node, yaml.SequenceNode):
            pending.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            pending.extend(item for pair in node.value for item in pair)


def _is_device_count(devices: Any) -> bool:
    if isinstance(devices, (list, tuple)):
        return len(devices) > 0
    text = str(devices).strip()
    return text == "auto" or text == "-1" or (text.isdigit() and int(text) >= 1)


# Trainer arguments Lightning only trips over mid-run (accumulate_grad_batches 0 divides by zero at the first step).
_POSITIVE_TRAINER_COUNTS = ("accumulate_grad_batches", "num_nodes", "check_val_every_n_epoch")


def _check_trainer_counts(trainer: Namespace) -> None:
    for name in _POSITIVE_TRAINER_COUNTS:
        value = trainer.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UserError(f"trainer.{name} must be a positive integer, got {preview(value)}")
    # 0 would divide by zero mid-run (val_check_interval) or train nothing and still make the run's folders
    for name in ("val_check_interval", "limit_train_batches"):
        if trainer.get(name) == 0:
            raise UserError(f"trainer.{name} must be more than 0 (a number of batches, or a fraction of the epoch)")


def _shown(path: str) -> str:
    """``path`` relative to the current folder when it is inside it: what to type in the next command."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


class _LightningAdvertising(logging.Filter):
    """Drops Lightning's tips about its cloud products (litlogger, litmodels) and the model summary's "0 Total
    Flops" line (FLOPs are only counted with a meta-device trace, which these runs never do); real messages pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("💡 Tip"):
            return False
        if "Total Flops" in message:
            record.msg, record.args = re.sub(r"\n\s*0\s+Total Flops", "", message), ()
        return True


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.callbacks.model_summary"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _LightningAdvertising) for f in logger.filters):
            logger.addFilter(_LightningAdvertising())
    # Lightning 2.6's own call into torch's pytree API; nothing a user of these lessons can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    # The lessons log once per epoch, so an epoch of fewer batches than log_every_n_steps (a small folder of your own
    # pictures) loses nothing.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging interval")
    # The lessons' data sits on the device already: worker processes would only copy it back and forth.
    warnings.filterwarnings("ignore", message=r"The '\w+_dataloader' does not have many workers")


def _checked_run_name(name: str) -> str:
    if not _RUN_NAME.fullmatch(name) or name in (".", ".."):
        raise UserError(
            f"--run_name must be a plain folder name (letters, digits, '_', '.', '-'), got {preview(name)}: it names "
            "checkpoints/<run_name>/ and lightning_logs/<run_name>/"
        )
    return name


def _version_folder(version: Any) -> str:
    """The folder a logger version names, as TensorBoardLogger and CSVLogger spell it: ``version_3``, or a string."""
    return version if isinstance(version, str) else f"version_{version}"


def _next_version(*roots: Optional[Path]) -> int:
    """One past the highest ``version_N`` in any of ``roots`` (0 for none), so checkpoints and logs share N."""
    numbers = [
        int(match.group(1))
        for root in roots
        if root is not None and root.is_dir()
        for entry in root.iterdir()
        if (match := _VERSION.fullmatch(entry.name))
    ]
    return max(numbers, default=-1) + 1


def _checkpoint_alias(alias: str, config: Namespace, flag: str = "--ckpt_path") -> Path:
    """``--ckpt_path last`` / ``best``: the newest run's ``last.ckpt`` / best checkpoint (``checkpoints/<run>/``)."""
    folder = Path(config.checkpoint.dirpath or os.path.join("checkpoints", config.run_name))
    if alias not in ("last", "best"):
        raise UserError(f"{flag} {alias} is not supported: give a checkpoint file, or last or best")
    runs = [folder] + sorted(
        (p for p in folder.glob("version_*") if _VERSION.fullmatch(p.name)),
        key=lambda p: int(p.name.removeprefix("version_")),
    )
    newest = next((run / "last.ckpt" for run in reversed(runs) if (run / "last.ckpt").is_file()), None)
    if newest is None:
        raise CheckpointError(
            f"{flag} {alias}: run {config.run_name!r} has no checkpoint in {folder}/ yet; train it first "
            "(fit with the same config) or give the checkpoint's path"
        )
    if alias == "last":
        return newest
    states = load_checkpoint(newest).get("callbacks")
    recorded = next(  # the state of the checkpoint callback with a monitor (the other one writes last.ckpt)
        (
            state.get("best_model_path")
            for state in (states.values() if isinstance(states, dict) else ())
            if isinstance(state, dict) and state.get("monitor") and "best_model_path" in state
        ),
        None,
    )
    # only a checkpoint file beside last.ckpt (the folder may have moved since): a checkpoint names no other file
    best = newest.parent / Path(recorded).name if isinstance(recorded, str) and recorded.endswith(".ckpt") else None
    if best is not None and best.is_file() and not best.is_symlink():
        return best
    raise CheckpointError(
        f"{flag} best: {newest} records no best checkpoint that still exists (a run without validation, or with "
        "save_top_k 0, keeps only last.ckpt)"
    )


def _default_run_name(config: Namespace) -> str:
    config_files = config.get("config") or []
    if config_files:
        return Path(str(config_files[0])).stem
    class_path = str(config.model.class_path)
    return class_path.rsplit(".", 1)[-1].removesuffix("Lesson").lower() or "lesson"


def main(argv: Optional[list[str]] = None) -> int:
    """The ``gpu-lessons`` console script and ``python -m gpu_lessons``: every subcommand, each through the one
    error path (:func:`gpu_lessons.errors.exit_code`); 0 after a successful run, so ``fit ... && test ...`` chains."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--version"]:
        import lightning
        import torch

        print(f"gpu_lessons {__version__} (torch {torch.__version__}, lightning {lightning.__version__})")
        return 0
    if args and args[0] in _TOOLS:  # imported only when asked for
        module, _ = _TOOLS[args[0]]
        return importlib.import_module(module).main(args[1:], prog=f"gpu-lessons {args[0]}")
    cli_main(argv)  # with None, LightningCLI reads sys.argv itself
    return 0


def cli_main(args: Optional[list[str]] = None) -> LessonCLI:
    """Run fit, validate, test or predict (``args`` instead of ``sys.argv`` lets tests drive it in-process): the
    LessonCLI, or, for a problem the user can fix, ``SystemExit`` with its exit code after its one error line."""
    _quiet_lightning()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm) if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else None
    try:
        return LessonCLI(args=args)
    except BaseException as error:
        code = exit_code(error)
        if code is None:
            raise
        raise SystemExit(code) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM outside a fit's steps (parsing, building, setting up data, the summary) stops the command like one
    inside them: exit code 143 with its line, not a silent death. While Lightning runs a stage its own handler is
    current, and it calls this one beside its own: then this does nothing, and Lightning stops after the batch."""
    if signal.getsignal(signal.SIGTERM) is _stop_on_sigterm:
        raise SIGTERMException()


if __name__ == "__main__":
    raise SystemExit(main())
