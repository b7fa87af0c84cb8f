"""Checks of what the user gave, before anything is built: config files, Trainer counts Lightning only trips over
mid-run, and what a checkpoint read for a resume changes in the config."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace, get_loader, set_loader

from gpu_lessons.data.tensor_datamodule import MAX_SEED
from gpu_lessons.errors import UserError, imported_class, preview
from gpu_lessons.lessons import config_path

MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_VALUES = 100_000  # a lesson's config has about 50; aliases count at every use, as parsing expands them
# Where data is read from and how it is served, not what it is: a resume elsewhere may change them freely.
_DATA_LOCATION_KEYS = {"data_dir", "download", "num_workers", "on_device", "loader", "predict_images", "predict_x",
                       "predict_points", "eval_batch_size"}


# Options that take a YAML file as well as a value (LightningCLI's groups): each file is read whole by jsonargparse,
# as is a YAML or JSON file given to a nested option (``--model.init_args.optimizer sgd.yaml``).
_FILE_OPTIONS = ("--config", "-c", "--data", "--model", "--trainer", "--optimizer", "--lr_scheduler")
_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


_jsonargparse_yaml_load = get_loader("yaml")


def bounded_yaml_load(text: str) -> Any:
    """jsonargparse's own YAML loader behind the config bounds, for every YAML text the CLI's parser reads: also a file
    that a config names (``data: d.yaml``), which no command-line check sees."""
    if len(text) > MAX_CONFIG_BYTES:
        raise UserError(f"the YAML {preview(text)} is {len(text):,} characters, more than the {MAX_CONFIG_BYTES:,} the CLI "
                        "reads as one file or value")
    check_config_expansion(text, f"the YAML {preview(text)}")
    return _jsonargparse_yaml_load(text)


PARSER_MODE = "bounded_yaml"  # the CLI's parser_mode: jsonargparse's documented way to give a parser its own loader
set_loader(PARSER_MODE, bounded_yaml_load, (yaml.YAMLError,))


def with_config_files(args: Any) -> Any:
    """``args`` with every option's value checked by :func:`checked_value` (``--option VALUE`` and
    ``--option=VALUE``); a ``--config`` lesson name becomes its shipped file."""
    if not isinstance(args, (list, tuple)):
        return args
    args = list(args)
    for i, arg in enumerate(args):
        if not isinstance(arg, str) or not arg.startswith("-"):
            continue
        option, joined, value = arg.partition("=")
        if joined:
            args[i] = f"{option}={checked_value(option, value)}"
        elif i + 1 < len(args) and isinstance(args[i + 1], str):
            args[i + 1] = checked_value(option, args[i + 1])
    return args


def checked_value(option: str, value: str) -> str:
    """``value`` of ``option``, bounded before jsonargparse reads it: a file given to ``--config`` or a group
    (``--data d.yaml``), or a YAML or JSON file given to any option, is at most :data:`MAX_CONFIG_BYTES` of UTF-8
    (not jsonargparse's UnicodeDecodeError traceback); it, or a value given inline, expands to at most
    :data:`MAX_CONFIG_VALUES` values."""
    if option in ("--config", "-c"):
        value = config_path(value)  # a shipped lesson's name (``cnn``) as its config file (a real file always wins)
    named_file = option in _FILE_OPTIONS or value.lower().endswith(_CONFIG_SUFFIXES)
    if named_file and os.path.exists(value) and not os.path.isfile(value):  # jsonargparse would wait on a FIFO
        raise UserError(f"{option} {value} is not a regular file (a folder, FIFO or device); give a YAML file")
    if named_file and os.path.isfile(value):
        size = os.path.getsize(value)
        if size > MAX_CONFIG_BYTES:
            raise UserError(f"{option} {value} is {size:,} bytes, more than a config's {MAX_CONFIG_BYTES:,}")
        try:
            text = Path(value).read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise UserError(f"{option} {value} is not a YAML text file (byte {error.start} is not UTF-8)") from None
        check_config_expansion(text, f"{option} {value}")
    elif len(value) > MAX_CONFIG_BYTES:
        raise UserError(f"{option}: the YAML given inline is {len(value):,} characters, more than a config's {MAX_CONFIG_BYTES:,}")
    else:
        check_config_expansion(value, f"{option} (given inline)")
    return value


def check_config_expansion(text: str, name: str) -> None:
    """Refuse YAML that expands to more than :data:`MAX_CONFIG_VALUES` values: aliases of aliases ("billion
    laughs") make a few lines into gigabytes. Invalid YAML is left to the parser's own message."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return
    pending, count = [root] if root is not None else [], 0
    while pending:
        node = pending.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise UserError(f"{name} expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases count at every use)")
        if isinstance(node, yaml.SequenceNode):
            pending.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            pending.extend(item for pair in node.value for item in pair)


def check_trainer_counts(trainer: Namespace) -> None:
    """Refuse Trainer counts Lightning only trips over mid-run (``accumulate_grad_batches 0`` divides by zero)."""
    for name in ("accumulate_grad_batches", "num_nodes", "check_val_every_n_epoch"):
        value = trainer.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UserError(f"trainer.{name} must be a positive integer, got {preview(value)}")
    for name in ("val_check_interval", "limit_train_batches"):  # 0 would also train nothing, yet make the folders
        if trainer.get(name) == 0:
            raise UserError(f"trainer.{name} must be more than 0 (a number of batches, or a fraction of the epoch)")


def set_model_settings(init_args: Namespace, hparams: dict[str, Any]) -> None:
    """Set a checkpoint's checked hyperparameters on the config's lesson: they describe the trained network, so they
    win where they differ from the config, and a line says so."""
    changed = []
    for key, value in hparams.items():
        if key in init_args:
            if init_args.get(key) != value:
                changed.append(f"{key} {preview(init_args.get(key))} -> {preview(value)}")
            init_args[key] = value
    if changed:
        sys.stderr.write(f"gpu_lessons: the checkpoint's model settings replace the config's: {', '.join(changed)}\n")


def say_how_the_data_differs(checkpoint: dict[str, Any], config: Namespace, ckpt_path: str) -> None:
    """Say in one line if a resume's data is other than the data the checkpoint was trained on: that may be meant
    (fine-tuning), or a mix-up."""
    saved = checkpoint.get("datamodule_hyper_parameters")
    data = config.get("data")
    if not isinstance(saved, dict) or not isinstance(data, Namespace) or not isinstance(data.get("init_args"), Namespace):
        return
    trained_on, uses = saved.get("_class_path"), data.class_path
    if trained_on not in (None, uses) and imported_class(str(trained_on)) is not imported_class(uses):
        sys.stderr.write(f"gpu_lessons: {ckpt_path} was trained on {preview(trained_on)}, this fit uses {uses}\n")
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


def check_seed(seed: Any) -> None:
    """``seed_everything`` as Lightning takes it: ``true``, ``false``/null or 0 to 2**32 - 1 (more fails inside it)."""
    if isinstance(seed, bool) or seed is None:
        return
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed_everything must be true, false or a whole number from 0 to {MAX_SEED}, got {preview(seed)}")
