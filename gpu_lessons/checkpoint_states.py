"""The states Lightning restores from a checkpoint (the callbacks', and for a resumed fit the loops' and optimizer's),
checked first: a damaged or hostile one is one :class:`~gpu_lessons.errors.CheckpointError`, never a traceback."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from gpu_lessons.data.batches import MAX_COUNT, POSITION_KEYS, check_position
from gpu_lessons.errors import PREVIEW, CheckpointError, preview

PLAIN_SCALARS = (bool, int, float, str, type(None))  # the values a config or a checkpoint's settings may hold
MAX_HISTORY = 100_000  # epochs in a run's learning curves
MAX_SAVED_CHECKPOINTS = 10_000  # a ModelCheckpoint's best_k_models
_MODEL_CHECKPOINT_KEYS = frozenset(ModelCheckpoint().state_dict())
_OPTIONAL_KEYS = ("dirpath", "monitor")  # strings or None
_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path", *_OPTIONAL_KEYS)
_SCORE_KEYS = ("best_model_score", "current_score", "kth_value")
# Where Lightning keeps 16-mixed's GradScaler state (the precision plugin's class name; before 2.0, the second key),
# and what torch's GradScaler can run with: each entry's kind, lowest and highest value.
_SCALER_STATE_KEYS = ("MixedPrecision", "native_amp_scaling_state")
_FLOAT32 = torch.finfo(torch.float32)
_SCALER_RANGES = {
    "scale": ((int, float), _FLOAT32.tiny, _FLOAT32.max),  # a float32 on the device
    "growth_factor": ((int, float), 1.0, _FLOAT32.max),
    "backoff_factor": ((int, float), _FLOAT32.tiny, math.nextafter(1.0, 0.0)),
    "growth_interval": (int, 1, 2**31 - 1),  # an int32 on the device
    "_growth_tracker": (int, 0, 2**31 - 1),
}


def check_callback_states(checkpoint: dict[str, Any], source: object) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint's callback states are a mapping and the states of this
    package's callbacks are well formed (which files they may name is :class:`ConfinedCheckpoint`'s to decide)."""
    states = checkpoint.get("callbacks", {})
    if not isinstance(states, dict) or not all(isinstance(key, str) and isinstance(state, dict) for key, state in states.items()):
        raise CheckpointError(f"{source} is damaged: its callbacks state is not a mapping of callback names to states")
    for key, state in states.items():
        name = key.split("{", 1)[0]
        if name.endswith("Checkpoint") and "best_model_path" in state:
            checked_model_checkpoint_state(state, f"{source}: {name}")
        elif name == "LessonPictures":
            checked_history(state, f"{source}: {name}")
        elif name == "RandomStates":
            checked_random_states(state, f"{source}: {name}")


def check_scaler_state(checkpoint: dict[str, Any], source: object) -> None:
    """Raise :class:`CheckpointError` unless a saved GradScaler state (``16-mixed`` on a GPU), which Lightning loads
    into the scaler as it is, has a new GradScaler's keys and numbers it can run with: a NaN scale would silently
    skip every step of the resumed run, a zero backoff end it in a misleading NaN loss."""
    for key in _SCALER_STATE_KEYS:
        state = checkpoint.get(key, {})
        if state == {}:  # no scaler: full or bf16 precision
            continue
        where = f"{source} is damaged: its GradScaler state ({key})"
        if not isinstance(state, dict):
            raise CheckpointError(f"{where} is {preview(state)}, not a mapping")
        unknown = [f"unknown key {preview(name)}" for name in state if name not in _SCALER_RANGES]
        missing = [f"no {name}" for name in _SCALER_RANGES if name not in state]
        if unknown or missing:
            raise CheckpointError(f"{where} has {', '.join(unknown + missing)}")
        bad = [f"{name} {preview(state[name])}" for name, (kinds, lowest, highest) in _SCALER_RANGES.items()
               if not (_is_number(state[name], kinds) and lowest <= state[name] <= highest)]
        if bad:
            raise CheckpointError(f"{where} has {', '.join(bad)}, which a GradScaler cannot run with")


def checked_model_checkpoint_state(state: Any, source: str) -> dict[str, Any]:
    """A ``ModelCheckpoint`` state with Lightning's keys, string paths, at most :data:`MAX_SAVED_CHECKPOINTS` saved
    ones and scalar tensor scores, or a :class:`CheckpointError` naming the key."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: its state is not a mapping")
    unknown = sorted(str(key) for key in state if key not in _MODEL_CHECKPOINT_KEYS)
    if unknown:
        raise CheckpointError(f"{source}: its state has keys a ModelCheckpoint does not keep: {', '.join(unknown)[:PREVIEW]}")
    missing = [key for key in ("best_model_path", "best_model_score") if key not in state]
    if missing:
        raise CheckpointError(f"{source}: its state has no {' or '.join(missing)}")
    for key, value in state.items():
        if key in _PATH_KEYS:
            fine = _is_path(value) or (value is None and key in _OPTIONAL_KEYS)
        elif key in _SCORE_KEYS:
            fine = value is None or _is_score(value)
        elif key == "best_k_models":
            fine = isinstance(value, dict) and len(value) <= MAX_SAVED_CHECKPOINTS
            fine = fine and all(_is_path(path) and _is_score(score) for path, score in value.items())
        else:  # a key a newer Lightning keeps: plain values only
            fine = isinstance(value, PLAIN_SCALARS) or _is_score(value)
        if not fine:
            raise CheckpointError(f"{source}: its {key} is {preview(value)}, which is not what a ModelCheckpoint keeps there")
    return state


def checked_history(state: Any, source: str) -> list[dict[str, float]]:
    """The pictures' state (``{"history": [...]}``) as learning curves: at most :data:`MAX_HISTORY` dicts, each an
    integer ``epoch`` and at most 64 named numbers; else a :class:`CheckpointError`."""
    if not isinstance(state, dict) or set(state) - {"history"}:
        raise CheckpointError(f"{source}: its learning curves are damaged (not a mapping with only a history)")
    history = state.get("history")
    if history is None:
        return []
    if not isinstance(history, list) or len(history) > MAX_HISTORY:
        raise CheckpointError(f"{source}: its learning curves are damaged (not a list of at most {MAX_HISTORY:,} epochs)")
    for entry in history:
        if (
            not isinstance(entry, dict)
            or len(entry) > 64
            or not _is_number(entry.get("epoch"), int)
            or not all(isinstance(key, str) and _is_number(value) for key, value in entry.items())
        ):
            raise CheckpointError(f"{source}: its learning curves are damaged (not a list of per-epoch numbers)")
    return [dict(entry) for entry in history]


def checked_random_states(state: Any, source: str) -> dict[str, Any]:
    """``RandomStates``' state (torch's generator, a CUDA one or ``None``, Python's ``random``), with the exact keys,
    uint8 tensors of the generators' sizes and the shape of ``random.getstate()``; else a :class:`CheckpointError`."""
    if not isinstance(state, dict) or set(state) != {"torch", "cuda", "python"}:
        raise CheckpointError(f"{source}: the random-number states are damaged (not torch, cuda and python states)")
    size = torch.get_rng_state().numel()
    generators = [state["torch"]] + ([] if state["cuda"] is None else [state["cuda"]])
    python = state["python"]
    version, internal, gauss = python if isinstance(python, tuple) and len(python) == 3 else (None, None, None)
    fine = (
        all(isinstance(g, torch.Tensor) and g.dtype == torch.uint8 and g.dim() == 1 and g.numel() <= 4 * size for g in generators)
        and state["torch"].numel() == size
        and isinstance(version, int)
        and isinstance(internal, tuple)
        and len(internal) == 625
        and all(_is_number(n, int) and 0 <= n < 2**32 for n in internal[:624])
        and isinstance(internal[624], int)
        and 0 <= internal[624] <= 624
        and (gauss is None or isinstance(gauss, float))
    )
    if not fine:
        raise CheckpointError(f"{source}: the random-number states are damaged (not the generators' states)")
    return state


def check_resumable(
    checkpoint: dict[str, Any], model: torch.nn.Module, source: object, fresh_fit_loop: Optional[dict[str, Any]] = None
) -> None:
    """Raise :class:`CheckpointError` unless ``fit`` can resume from the checkpoint: it has loop and optimizer states,
    its fit loop's is shaped as ``fresh_fit_loop`` (a new trainer's), and a lesson's one optimizer state (and
    scheduler state) fits the configured optimizer and the lesson's parameters."""
    missing = [key for key in ("loops", "optimizer_states") if not isinstance(checkpoint.get(key), (dict, list))]
    if missing:
        raise CheckpointError(
            f"{source} holds no {' or '.join(missing)} (a weights-only checkpoint, or a damaged one): fit cannot resume "
            "from it; test or predict with it, or load it in Python (load_from_checkpoint) to train on from its weights"
        )
    schedulers = checkpoint.get("lr_schedulers", [])
    if not isinstance(schedulers, list) or not all(isinstance(state, dict) for state in schedulers):
        raise CheckpointError(f"{source} is damaged: its lr_schedulers state is not a list of scheduler states")
    if fresh_fit_loop is not None:
        saved = checkpoint["loops"].get("fit_loop") if isinstance(checkpoint["loops"], dict) else None
        _check_loop_state(saved, fresh_fit_loop, "fit_loop", source)
        loaders = saved.get("state_dict", {}).get("combined_loader", [])
        if not isinstance(loaders, list) or len(loaders) > 64:
            raise CheckpointError(f"{source} is damaged: its data loaders' state is {preview(loaders)}")
        for position in loaders:  # this package's loaders' (other loaders check their own)
            if isinstance(position, dict) and set(position) <= set(POSITION_KEYS):
                check_position(position, source)
    factory = getattr(model, "optimizer_factory", None)
    if factory is None:  # a module that configures its own optimizers: Lightning's loading checks them
        return
    states = checkpoint["optimizer_states"]
    if not isinstance(states, list) or len(states) != 1 or not isinstance(states[0], dict):
        count = len(states) if isinstance(states, (list, dict)) else "no"
        raise CheckpointError(f"{source} holds {count} optimizer states; {type(model).__name__} trains with one optimizer")
    groups, state = states[0].get("param_groups"), states[0].get("state")
    if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict) or not isinstance(state, dict):
        raise CheckpointError(f"{source} is damaged: its optimizer state has no usable param_groups and state")
    parameters = list(model.parameters())
    ids = groups[0].get("params")
    if ids != list(range(len(parameters))):
        shown = f"{len(ids):,} parameter ids" if isinstance(ids, list) else preview(ids)
        raise CheckpointError(
            f"{source}: its optimizer state is for {shown}, not this lesson's {len(parameters)} parameters"
        )
    for parameter_id, buffers in state.items():  # each buffer has its parameter's shape, or is a scalar (a step)
        if not isinstance(parameter_id, int) or not 0 <= parameter_id < len(parameters) or not isinstance(buffers, dict):
            raise CheckpointError(f"{source} is damaged: its optimizer state has an entry for {preview(parameter_id)}")
        shape = parameters[parameter_id].shape
        for name, buffer in buffers.items():
            if isinstance(buffer, torch.Tensor) and buffer.dim() > 0 and buffer.shape != shape:
                raise CheckpointError(
                    f"{source} is damaged: its optimizer's {preview(name)} for parameter {parameter_id} has shape "
                    f"{list(buffer.shape)}, not {list(shape)}"
                )
    # Load the saved settings into the configured optimizer on stand-ins of the parameters: what the optimizer then
    # still lacks (SGD's momentum after Adam's state) would fail with a KeyError at the first step.
    probe = factory([torch.nn.Parameter(torch.zeros_like(parameter)) for parameter in parameters])
    try:
        probe.load_state_dict({"state": {}, "param_groups": groups})
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{source}: its optimizer state does not fit the configured optimizer ({preview(error, 200)})") from None
    lacking = sorted(set(probe.defaults) - set(probe.param_groups[0]))
    if lacking:
        raise CheckpointError(
            f"{source} was trained with another optimizer than the configured {type(probe).__name__} (its state has no "
            f"{', '.join(lacking)}): resume with the optimizer it was trained with (the run's config.yaml says which)"
        )
    for key, default in probe.defaults.items():
        if not _like(groups[0][key], default):
            raise CheckpointError(
                f"{source} is damaged: its optimizer's {key} is {preview(groups[0][key])}, not like {type(probe).__name__}'s "
                f"{preview(default)}"
            )
    _check_scheduler_states(schedulers, model, probe, source)


def _check_scheduler_states(states: list[Any], model: torch.nn.Module, optimizer: Any, source: object) -> None:
    """The saved LR scheduler states are shaped as the configured scheduler's: torch copies them onto it unchecked."""
    if getattr(model, "scheduler_factory", None) is None:
        if states:
            raise CheckpointError(f"{source} holds {len(states)} LR scheduler states; {type(model).__name__} has no scheduler")
        return
    try:
        fresh = model.build_scheduler(optimizer, lambda: 1).state_dict()  # a run's length only changes numbers
    except Exception:  # a scheduler that cannot be built here says why when the fit builds it
        return
    if len(states) != 1:
        raise CheckpointError(f"{source} holds {len(states)} LR scheduler states; {type(model).__name__} has one scheduler")
    _check_like(states[0], fresh, "lr_schedulers[0]", source)


def _check_like(saved: Any, fresh: Any, where: str, source: object) -> None:
    """``saved`` is shaped as ``fresh`` is: the same keys, list lengths, strings, and kinds of numbers."""
    keys: Any = ()
    if isinstance(fresh, dict):
        fine, keys = isinstance(saved, dict) and set(saved) == set(fresh), fresh
    elif isinstance(fresh, (list, tuple)):
        fine, keys = isinstance(saved, (list, tuple)) and len(saved) == len(fresh), range(len(fresh))
    elif isinstance(fresh, str):
        fine = saved == fresh
    else:  # a setting that is None by default may be saved as a number, not a string
        fine = _like(saved, fresh) and not (fresh is None and isinstance(saved, str))
    if not fine:
        raise CheckpointError(f"{source} is damaged: its {where} is {preview(saved)}, where the configured one has {preview(fresh)}")
    for key in keys:
        inner = f"{where}.{key}" if isinstance(fresh, dict) else f"{where}[{key}]"
        _check_like(saved[key], fresh[key], inner, source)


def check_stage_loop(checkpoint: dict[str, Any], stage: str, fresh: dict[str, Any], source: object) -> None:
    """For validate, test or predict: the stage's own loop state, which Lightning restores if there are loops."""
    loops = checkpoint.get("loops")
    if loops is None:
        return
    if not isinstance(loops, dict):
        raise CheckpointError(f"{source} is damaged: its loops state is {preview(loops)}, not a mapping")
    _check_loop_state(loops.get(f"{stage}_loop"), fresh, f"{stage}_loop", source)


def _check_loop_state(saved: Any, fresh: dict[str, Any], where: str, source: object) -> None:
    """``saved`` has every key of ``fresh`` (a new loop's state), dicts for dicts, bools for bools and counts (0 to
    :data:`MAX_COUNT`) for ints; unknown keys only inside a ``state_dict`` (a loader's position: its owner checks)."""
    damaged = f"{source} is damaged: its loop state {where}"
    if not isinstance(saved, dict):
        raise CheckpointError(f"{damaged} is {preview(saved)}, not a mapping")
    missing = [str(key) for key in fresh if key not in saved]
    unknown = [str(key) for key in saved if key not in fresh]
    if missing:
        raise CheckpointError(f"{damaged} has no {', '.join(missing)[:PREVIEW]}")
    if unknown and not where.endswith("state_dict"):
        raise CheckpointError(f"{damaged} has unknown keys {', '.join(unknown)[:PREVIEW]}")
    for key, expected in fresh.items():
        value, inner = saved[key], f"{where}.{key}"
        if isinstance(expected, dict):
            _check_loop_state(value, expected, inner, source)
        elif isinstance(expected, bool) and not isinstance(value, bool):
            raise CheckpointError(f"{source} is damaged: its loop state {inner} is {preview(value)}, not true or false")
        elif _is_number(expected, int) and not (_is_number(value, int) and 0 <= value <= MAX_COUNT):
            raise CheckpointError(f"{source} is damaged: its loop state {inner} is {preview(value)}, not a count")


def _like(value: object, default: object) -> bool:
    """Whether a saved optimizer setting has the kind of value the optimizer's own default has."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float, torch.Tensor)):
        return _is_number(value) or (isinstance(value, torch.Tensor) and value.numel() == 1)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list)) and len(value) == len(default) and all(map(_like, value, default))
    return isinstance(value, PLAIN_SCALARS)  # None defaults (foreach, fused): plain values


def _is_number(value: object, kinds: type | tuple[type, ...] = (int, float)) -> bool:
    """A number of ``kinds`` and not a bool (an int to Python, not to a checkpoint)."""
    return isinstance(value, kinds) and not isinstance(value, bool)


def _is_path(value: object) -> bool:
    return isinstance(value, str) and "\x00" not in value


def _is_score(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point()
