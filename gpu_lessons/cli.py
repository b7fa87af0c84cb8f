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
from gpu_lessons.config_checks import check_seed, check_trainer_counts, say_how_the_data_differs, set_model_settings, with_config_files
from gpu_lessons.cuda import resolve_accelerator
from gpu_lessons.errors import UserError, exit_code, imported_class, one_line
from gpu_lessons.models.base import Lesson
from gpu_lessons.progress import print_fit_summary, quiet_lightning, shown
from gpu_lessons.run_folders import NonOverwritingSaveConfigCallback, RunFolders, checked_run_name, checkpoint_alias, default_run_name
from gpu_lessons.checkpoint_states import check_resumable, check_stage_loop
from gpu_lessons.safe_checkpoints import check_weights_fit, checked_hyperparameters, load_checkpoint

_LOGGER_DEFAULT_NAME = "lightning_logs"  # TensorBoardLogger's and CSVLogger's own default for ``name``
_LIGHTNING_CKPT_ALIASES = ("last", "best", "hpc", "registry")



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
        kwargs.setdefault("parser_kwargs", {
            "exit_on_error": False, "prog": "gpu-lessons", "description": DESCRIPTION, "allow_abbrev": False,
            **{name: {"allow_abbrev": False, "description": f"gpu-lessons {name}: {what}."}
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
        """Resolve the CUDA fallback, the run's folders and the callbacks that follow from other settings, before
        anything is built."""
        config = _subcommand_config(self.config, self.subcommand)
        if self.subcommand is not None:
            config.ckpt_path = self.ckpt_path  # checked and held back by parse_arguments; the trainer reads it
        if config.output is not None and self.subcommand != "predict":
            raise UserError("--output is for predict: it writes the predictions to a CSV file")
        check_trainer_counts(config.trainer)
        resolve_accelerator(config.trainer, config.strict_accelerator)
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
        self.folders.place(config, self.subcommand)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse; then read ``--ckpt_path`` once and check it before anything is built: it exists, loads with
        ``weights_only=True``, was written by the configured lesson, and its hyperparameters are plain values for that
        lesson's arguments (:func:`~gpu_lessons.safe_checkpoints.checked_hyperparameters`: a checkpoint is someone else's
        data, and nothing in it may choose code). The checked values are set on the config's lesson.

        The path itself is held back (``self.ckpt_path``) until :meth:`before_instantiate_classes`: LightningCLI's own
        merge of a checkpoint's hyperparameters, which runs in between, would read the file again and hand its
        ``class_path`` to jsonargparse to import; with no ``ckpt_path`` in the config, it has nothing to read."""
        if args is None:  # the command line (LightningCLI warns about ``args`` given beside ``sys.argv``)
            self.config = parser.parse_args(with_config_files(sys.argv[1:]))
        else:
            super().parse_arguments(parser, with_config_files(args))
        self.checkpoint: Optional[dict[str, Any]] = None
        self.ckpt_path: Optional[str] = None
        self.initial_weights: Optional[dict[str, Any]] = None
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else self.config
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
            config.init_weights = self._resolved(config.init_weights, config, "--init_weights")
            self.initial_weights, _ = self._checked_checkpoint(config.init_weights, config)
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        self.ckpt_path, config.ckpt_path = self._resolved(ckpt_path, config), None
        self.checkpoint, hparams = self._checked_checkpoint(self.ckpt_path, config)
        set_model_settings(config.model.init_args, hparams)
        if subcommand == "fit":
            say_how_the_data_differs(self.checkpoint, config, self.ckpt_path)

    @staticmethod
    def _resolved(path: str, config: Namespace, flag: str = "--ckpt_path") -> str:
        if path not in _LIGHTNING_CKPT_ALIASES:
            return path
        return str(checkpoint_alias(path, config.run_name, config.checkpoint.dirpath, flag))

    @staticmethod
    def _checked_checkpoint(path: str, config: Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
        """The checkpoint at ``path`` and its checked hyperparameters, if the config's lesson wrote it (or it records
        no lesson, saved from Python: its values are then checked against the config's)."""
        checkpoint = load_checkpoint(path)
        configured = imported_class(config.model.class_path) or Lesson  # already imported by parsing
        _, hparams = checked_hyperparameters(checkpoint, configured, path)
        return checkpoint, hparams

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
            if isinstance(self.trainer.strategy.checkpoint_io, AtomicCheckpointIO):
                self.trainer.strategy.checkpoint_io.hand_over(self.ckpt_path, self.checkpoint)
            if self.subcommand == "fit":
                check_resumable(self.checkpoint, model, self.ckpt_path, self.trainer.fit_loop.state_dict())
            elif self.subcommand in ("validate", "test", "predict"):
                stage_loop = getattr(self.trainer, f"{self.subcommand}_loop").state_dict()
                check_stage_loop(self.checkpoint, self.subcommand, stage_loop, self.ckpt_path)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer, with the callbacks of :data:`CALLBACKS` that are not null after its own."""
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
        callbacks += [config[key] for key in CALLBACKS if config[key] is not None]
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)


def _subcommand_config(config: Namespace, subcommand: Optional[str]) -> Namespace:
    """The part of a LightningCLI config for ``subcommand`` (all of it without subcommands, ``run=False``)."""
    return config[subcommand] if subcommand else config


def _is_default_logger(logger: Any) -> bool:
    return (
        isinstance(logger, Namespace)
        and str(logger.get("class_path", "")).endswith("TensorBoardLogger")
        and logger.init_args.get("save_dir") == "lightning_logs"
    )


def main(argv: Optional[list[str]] = None) -> int:
    """The ``gpu-lessons`` console script and ``python -m gpu_lessons``: every subcommand, each through the one
    error path (:func:`gpu_lessons.errors.exit_code`); 0 after a successful run, so ``fit ... && test ...`` chains."""
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
    """Run fit, validate, test or predict (``args`` instead of ``sys.argv`` lets tests drive it in-process): the
    LessonCLI, or, for a problem the user can fix, ``SystemExit`` with its exit code after its one error line."""
    quiet_lightning()
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
    previous = (
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        if main_thread and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else None
    )
    pressed: list[int] = []

    def ctrl_c(signum: int, frame: Any) -> None:
        pressed.append(signum)  # Lightning turns a Ctrl-C inside a stage into its own exit(1): remember it was one
        raise KeyboardInterrupt

    sigint = (
        signal.signal(signal.SIGINT, ctrl_c)
        if main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler else None
    )
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
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM outside a fit's steps (parsing, building, setting up data, the summary) stops the command like one
    inside them: exit code 143 with its line, not a silent death. While Lightning runs a stage its own handler is
    current, and it calls this one beside its own: then this does nothing, and Lightning stops after the batch."""
    if signal.getsignal(signal.SIGTERM) is _stop_on_sigterm:
        raise SIGTERMException()


if __name__ == "__main__":
    raise SystemExit(main())
