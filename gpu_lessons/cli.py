"""``python -m gpu_lessons {fit,validate,test,predict} --config configs/<lesson>.yaml``: a LightningCLI in subclass
mode (any lesson, any DataModule) that falls back to the CPU where CUDA is not usable, gives each fit folders of its
own, adds its callbacks as config defaults, checks ``--ckpt_path`` before anything is built, and ends a user's
error in one ``error:`` line and exit code 2, not a traceback."""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from typing import Any, Optional

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from gpu_lessons import __version__
from gpu_lessons.checkpointing import AtomicCheckpointIO, ConfinedCheckpoint
from gpu_lessons.cli_config import CALLBACKS, DESCRIPTION, LIGHTNING_SUBCOMMANDS, TOOLS, add_lesson_arguments
from gpu_lessons.config_checks import (
    PARSER_MODE, check_seed, check_trainer_counts, say_how_the_data_differs, set_model_settings, with_config_files
)
from gpu_lessons.cuda import resolve_accelerator
from gpu_lessons.errors import UserError, exit_code, imported_class, one_line
from gpu_lessons.models.base import Lesson
from gpu_lessons.progress import print_fit_summary, quiet_lightning, shown
from gpu_lessons.run_folders import NonOverwritingSaveConfigCallback, RunFolders, checked_run_name, checkpoint_alias, default_run_name
from gpu_lessons.checkpoint_states import check_resumable, check_stage_loop
from gpu_lessons.safe_checkpoints import check_weights_fit, checked_hyperparameters, load_checkpoint


class LessonCLI(LightningCLI):
    """LightningCLI for the lessons; see the module docstring for what it adds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.folders = RunFolders()
        saver = kwargs.setdefault("save_config_callback", NonOverwritingSaveConfigCallback)
        if saver is NonOverwritingSaveConfigCallback:
            kwargs.setdefault("save_config_kwargs", {"run_folders": self.folders.set_keys})
        kwargs.setdefault("seed_everything_default", 42)
        # parse errors come back as exceptions, for cli_main to report in one line instead of the usage block
        # no abbreviations (``--trainer.max_epoch`` would be taken as ``max_epochs``), in every subcommand's parser too
        # every YAML read through config_checks.bounded_yaml_load (a file a config names too); LightningCLI gives the
        # subcommands' parsers only their own kwargs, so each gets these too
        every_parser = {"allow_abbrev": False, "parser_mode": PARSER_MODE}
        kwargs.setdefault("parser_kwargs", {
            "exit_on_error": False, "prog": "gpu-lessons", "description": DESCRIPTION, **every_parser,
            **{name: {**every_parser, "description": f"gpu-lessons {name}: {what}."}
               for name, what in LIGHTNING_SUBCOMMANDS.items()},
        })
        try:
            super().__init__(Lesson, LightningDataModule, *args, subclass_mode_model=True, subclass_mode_data=True, **kwargs)
        except BaseException:
            self.folders.remove_if_nothing_saved()
            raise

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The CLI's own options and callbacks (:func:`~gpu_lessons.cli_config.add_lesson_arguments`)."""
        add_lesson_arguments(parser)

    def before_instantiate_classes(self) -> None:
        """Resolve the CUDA fallback, the run's folders and the callbacks that follow from other settings."""
        config = _subcommand_config(self.config, self.subcommand)
        if self.subcommand is not None:
            config.ckpt_path = self.ckpt_path  # checked and held back by parse_arguments; the trainer reads it
        if config.output is not None and self.subcommand != "predict":
            raise UserError("--output is for predict: it writes the predictions to a CSV file")
        check_trainer_counts(config.trainer)
        resolve_accelerator(config.trainer, config.strict_accelerator)
        logger = config.trainer.logger
        if isinstance(logger, Namespace):
            logger_args = logger.init_args
            if logger_args.get("name") == "lightning_logs":  # TensorBoardLogger's and CSVLogger's own default
                logger_args.name = config.run_name
            if (
                self.subcommand == "predict"
                and str(logger.get("class_path")).endswith("TensorBoardLogger")
                and logger_args.get("save_dir") == "lightning_logs"
            ):
                config.trainer.logger = False  # predictions are printed (and --output written): nothing to log
        if config.trainer.logger in (False, []):
            config.lr_monitor = None  # it has nowhere to log to (and would fail the fit)
        if config.trainer.enable_progress_bar is False:
            config.progress_bar = None
        elif config.progress_bar is None and config.trainer.enable_progress_bar is None:
            config.trainer.enable_progress_bar = False  # null means no bar, not Lightning's own (redrawn every step)
        if config.output is not None and isinstance(config.predictions, Namespace):
            config.predictions.init_args.output = config.output
        self.folders.place(config, self.subcommand)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse; then read ``--ckpt_path`` (and ``--init_weights``) once and check it before anything is built
        (:func:`~gpu_lessons.safe_checkpoints.checked_hyperparameters`: nothing in a checkpoint may choose code).
        The path is held back in ``self.ckpt_path`` until :meth:`before_instantiate_classes`, so that LightningCLI's
        own merge of a checkpoint's hyperparameters has nothing to read and import."""
        if args is None:  # the command line (LightningCLI warns about ``args`` given beside ``sys.argv``)
            self.config = parser.parse_args(with_config_files(sys.argv[1:]))
        else:
            super().parse_arguments(parser, with_config_files(args))
        self.checkpoint: Optional[dict[str, Any]] = None
        self.ckpt_path: Optional[str] = None
        self.initial_weights: Optional[dict[str, Any]] = None
        subcommand = self.config.get("subcommand")
        config = _subcommand_config(self.config, subcommand)
        config.run_name = checked_run_name(config.run_name or default_run_name(config))
        check_seed(config.get("seed_everything"))
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
            path, self.initial_weights, _ = self._checked_checkpoint(config.init_weights, config, "--init_weights")
            config.init_weights = path
        if not config.get("ckpt_path"):
            return
        self.ckpt_path, self.checkpoint, hparams = self._checked_checkpoint(config.ckpt_path, config, "--ckpt_path")
        config.ckpt_path = None
        set_model_settings(config.model.init_args, hparams)
        if subcommand == "fit":
            say_how_the_data_differs(self.checkpoint, config, self.ckpt_path)

    @staticmethod
    def _checked_checkpoint(path: str, config: Namespace, flag: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The checkpoint's path (``last``/``best`` resolved), the checkpoint and its checked hyperparameters, if the
        config's lesson wrote it (or it records no lesson: its values are then checked against the config's)."""
        if path in ("last", "best", "hpc", "registry"):  # Lightning's aliases: only last and best are supported
            path = str(checkpoint_alias(path, config.run_name, config.checkpoint.dirpath, flag))
        checkpoint = load_checkpoint(path)
        configured = imported_class(config.model.class_path) or Lesson  # already imported by parsing
        _, hparams = checked_hyperparameters(checkpoint, configured, path)
        return path, checkpoint, hparams

    def after_fit(self) -> None:
        """A short summary: the metrics, and the paths to give ``test``/``predict``/a resume."""
        built = _subcommand_config(self.config_init, self.subcommand)
        print_fit_summary(self.trainer, built.checkpoint, built.last_checkpoint, built.pictures.folder)

    def after_test(self) -> None:
        """Say where the test's pictures went (a confusion matrix and the misclassified digits, for MNIST)."""
        pictures = _subcommand_config(self.config_init, self.subcommand).pictures
        if pictures.written and self.trainer.is_global_zero:
            print(f"pictures: {', '.join(shown(str(path)) for path in pictures.written)}")

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a constructor's complaint about an argument is a user error."""
        try:
            super().instantiate_classes()
        except (ValueError, MisconfigurationException, ImportError) as error:  # ImportError: e.g. accelerator tpu
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
            if isinstance(self.trainer.strategy.checkpoint_io, AtomicCheckpointIO):
                self.trainer.strategy.checkpoint_io.hand_over(self.ckpt_path, self.checkpoint)
            if self.subcommand == "fit":
                check_resumable(self.checkpoint, model, self.ckpt_path, self.trainer.fit_loop.state_dict())
            else:  # validate, test or predict
                stage_loop = getattr(self.trainer, f"{self.subcommand}_loop").state_dict()
                check_stage_loop(self.checkpoint, self.subcommand, stage_loop, self.ckpt_path)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer, with the callbacks of :data:`CALLBACKS` that are not null after its own."""
        config = _subcommand_config(self.config_init, self.subcommand)
        configured = config.trainer.get("callbacks") or []
        callbacks = list(configured) if isinstance(configured, list) else [configured]
        for callback in callbacks:
            if isinstance(callback, ModelCheckpoint) and not isinstance(callback, ConfinedCheckpoint):
                # Lightning's own would act on the paths a checkpoint records (deleting them as they rotate out)
                raise UserError(
                    f"trainer.callbacks: use gpu_lessons.checkpointing.ConfinedCheckpoint (the same arguments) instead "
                    f"of {type(callback).__name__}: it restores from a checkpoint only files of its own folder"
                )
        callbacks += [config[key] for key in CALLBACKS if config[key] is not None]
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)


def _subcommand_config(config: Namespace, subcommand: Optional[str]) -> Namespace:
    """The part of a LightningCLI config for ``subcommand`` (all of it without subcommands, ``run=False``)."""
    return config[subcommand] if subcommand else config


def main(argv: Optional[list[str]] = None) -> int:
    """The ``gpu-lessons`` console script: every subcommand through the one error path; 0 after a successful run."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--version"]:
        import lightning
        import torch

        print(f"gpu_lessons {__version__} (torch {torch.__version__}, lightning {lightning.__version__})")
        return 0
    if args and args[0] in TOOLS:  # imported only when asked for
        module, _ = TOOLS[args[0]]
        return importlib.import_module(module).main(args[1:], prog=f"gpu-lessons {args[0]}")
    cli_main(argv)  # with None, LightningCLI reads sys.argv itself
    return 0


def cli_main(args: Optional[list[str]] = None) -> LessonCLI:
    """Run fit, validate, test or predict (``args`` instead of ``sys.argv``): the LessonCLI, or, for a problem the
    user can fix, ``SystemExit`` with its exit code after its one error line."""
    quiet_lightning()
    pressed: list[int] = []

    def ctrl_c(signum: int, frame: Any) -> None:
        pressed.append(signum)  # Lightning turns a Ctrl-C inside a stage into its own exit(1): remember it was one
        raise KeyboardInterrupt

    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _stop_on_sigterm)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, ctrl_c)
    try:
        return LessonCLI(args=args)
    except BaseException as error:
        if type(error) is SystemExit and error.code == 1 and pressed:  # Lightning's own exit after a Ctrl-C
            error = KeyboardInterrupt()
        code = exit_code(error)
        if code is None:
            raise
        raise SystemExit(code) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM outside a stage (parsing, building, the summary) stops the command as inside one: exit code 143.
    While Lightning runs a stage, its own handler calls this one beside it: then this does nothing."""
    if signal.getsignal(signal.SIGTERM) is _stop_on_sigterm:
        raise SIGTERMException()


if __name__ == "__main__":
    raise SystemExit(main())
