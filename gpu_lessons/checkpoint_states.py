"""The states Lightning restores from a checkpoint, checked before anything acts on them: the callbacks' (which
Lightning hands back on every load), and, for a resumed fit, the loops' and the optimizer's. A damaged or hostile
state is one :class:`~gpu_lessons.errors.CheckpointError` naming what is wrong, never a hang, a traceback or a
silent surprise mid-run."""

from __future__ import annotations

from typing import Any, Optional

import torch

from gpu_lessons.data.batches import MAX_COUNT, POSITION_KEYS, check_position
from gpu_lessons.errors import PREVIEW, CheckpointError, preview

PLAIN_SCALARS = (bool, int, float, str, type(None))  # the values a config or a checkpoint's settings may hold
MAX_HISTORY = 100_000  # epochs in a run's learning curves
MAX_SAVED_CHECKPOINTS = 10_000  # a ModelCheckpoint's best_k_models
_PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")
_SCORE_KEYS = ("best_model_score", "current_score", "kth_value")


def check_callback_states(checkpoint: dict[str, Any], source: object) -> None:
    """Raise :class:`CheckpointError` unless ``checkpoint["callbacks"]`` is a mapping of state keys to states and the
    states of the callbacks this package adds (a ``ModelCheckpoint``'s, the pictures' history, the random states)
    are well formed. Which files a ``ModelCheckpoint`` state may name is :class:`ConfinedCheckpoint`'s to decide, as
    only it knows its folder."""
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


def checked_model_checkpoint_state(state: Any, source: str) -> dict[str, Any]:
    """A ``ModelCheckpoint`` state with its keys (those of Lightning's ``ModelCheckpoint.state_dict``) and types
    checked: strings for the paths, at most :data:`MAX_SAVED_CHECKPOINTS` saved ones, scalar tensors (or ``None``) for
    the scores. Anything else raises :class:`CheckpointError` naming the key."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: its state is not a mapping")
    unknown = sorted(str(key) for key in state if key not in _MODEL_CHECKPOINT_KEYS)
    if unknown:
        raise CheckpointError(f"{source}: its state has keys a ModelCheckpoint does not keep: {', '.join(unknown)[:PREVIEW]}")
    missing = [key for key in ("best_model_path", "best_model_score") if key not in state]
    if missing:
        raise CheckpointError(f"{source}: its state has no {' or '.join(missing)}")
    for key, value in state.items():
        if key in _PATH_KEYS or key in ("dirpath", "monitor"):
            fine = (isinstance(value, str) and "\x00" not in value) or (value is None and key in ("dirpath", "monitor"))
        elif key in _SCORE_KEYS:
            fine = value is None or _is_score(value)
        elif key == "best_k_models":
            fine = (
                isinstance(value, dict)
                and len(value) <= MAX_SAVED_CHECKPOINTS
                and all(isinstance(path, str) and "\x00" not in path and _is_score(score) for path, score in value.items())
            )
        else:  # a key a newer Lightning keeps: plain values only
            fine = isinstance(value, PLAIN_SCALARS) or _is_score(value)
        if not fine:
            raise CheckpointError(f"{source}: its {key} is {preview(value)}, which is not what a ModelCheckpoint keeps there")
    return state


def _is_score(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point()


def _model_checkpoint_keys() -> frozenset[str]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    return frozenset(ModelCheckpoint().state_dict())


_MODEL_CHECKPOINT_KEYS = _model_checkpoint_keys()


def checked_history(state: Any, source: str) -> list[dict[str, float]]:
    """The pictures' state (``{"history": [...]}``) as learning curves, or a :class:`CheckpointError` naming what
    is wrong: at most :data:`MAX_HISTORY` per-epoch dicts, each with an integer ``epoch`` and at most 64 named
    numbers."""
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
            or isinstance(entry.get("epoch"), bool)
            or not isinstance(entry.get("epoch"), int)
            or not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in entry.items())
        ):
            raise CheckpointError(f"{source}: its learning curves are damaged (not a list of per-epoch numbers)")
    return [dict(entry) for entry in history]


def checked_random_states(state: Any, source: str) -> dict[str, Any]:
    """The random-number states of ``RandomStates`` (torch's CPU generator, a CUDA generator or ``None``, Python's
    ``random``), or a :class:`CheckpointError`: the exact keys, uint8 tensors of the generators' sizes, and the
    shape of ``random.getstate()``."""
    if not isinstance(state, dict) or set(state) != {"torch", "cuda", "python"}:
        raise CheckpointError(f"{source}: the random-number states are damaged (not torch, cuda and python states)")
    size = torch.get_rng_state().numel()
    generators = [state["torch"]] + ([] if state["cuda"] is None else [state["cuda"]])
    python = state["python"]
    fine = (
        all(isinstance(g, torch.Tensor) and g.dtype == torch.uint8 and g.dim() == 1 and g.numel() <= 4 * size for g in generators)
        and state["torch"].numel() == size
        and isinstance(python, tuple)
        and len(python) == 3
        and isinstance(python[0], int)
        and isinstance(python[1], tuple)
        and len(python[1]) == 625
        and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**32 for n in python[1][:624])
        and isinstance(python[1][624], int)
        and 0 <= python[1][624] <= 624
        and (python[2] is None or isinstance(python[2], float))
    )
    if not fine:
        raise CheckpointError(f"{source}: the random-number states are damaged (not the generators' states)")
    return state


def check_resumable(
    checkpoint: dict[str, Any], model: torch.nn.Module, source: object, fresh_fit_loop: Optional[dict[str, Any]] = None
) -> None:
    """Raise :class:`CheckpointError` unless ``fit`` can resume from the checkpoint: it has the loops' and
    optimizer's state (not only weights); its fit loop's state has every key of ``fresh_fit_loop`` (a new
    trainer's ``fit_loop.state_dict()``) with counts for counts; and, for a lesson, its one optimizer state is the
    configured optimizer's, for the lesson's parameters and of their shapes."""
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
    states = checkpoint["optimizer_states"]
    if factory is None:  # a module that configures its own optimizers: Lightning's loading checks them
        return
    if not isinstance(states, list) or len(states) != 1 or not isinstance(states[0], dict):
        count = len(states) if isinstance(states, (list, dict)) else "no"
        raise CheckpointError(f"{source} holds {count} optimizer states; {type(model).__name__} trains with one optimizer")
    groups, state = states[0].get("param_groups"), states[0].get("state")
    if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict) or not isinstance(state, dict):
        raise CheckpointError(f"{source} is damaged: its optimizer state has no usable param_groups and state")
    parameters = list(model.parameters())
    ids = groups[0].get("params")
    if not isinstance(ids, list) or ids != list(range(len(parameters))):
        shown = f"{len(ids):,} parameter ids" if isinstance(ids, list) else preview(ids)
        raise CheckpointError(
            f"{source}: its optimizer state is for {shown}, not this lesson's {len(parameters)} parameters"
        )
    _check_optimizer_tensors(state, parameters, source)
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
    """The saved LR scheduler states have the configured scheduler's keys and kinds of values (its strings, such as
    ReduceLROnPlateau's mode, the configured ones): torch copies them onto the scheduler unchecked, and a wrong one
    fails mid-run."""
    factory = getattr(model, "scheduler_factory", None)
    if factory is None:
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
    if isinstance(fresh, dict):
        fine = isinstance(saved, dict) and set(saved) == set(fresh)
    elif isinstance(fresh, (list, tuple)):
        fine = isinstance(saved, (list, tuple)) and len(saved) == len(fresh)
    elif isinstance(fresh, str):
        fine = saved == fresh
    else:
        fine = _like(saved, fresh) and (fresh is not None or saved is None or isinstance(saved, (int, float)))
    if not fine:
        raise CheckpointError(f"{source} is damaged: its {where} is {preview(saved)}, where the configured one has {preview(fresh)}")
    if isinstance(fresh, dict):
        for key in fresh:
            _check_like(saved[key], fresh[key], f"{where}.{key}", source)
    elif isinstance(fresh, (list, tuple)):
        for i, (item, expected) in enumerate(zip(saved, fresh)):
            _check_like(item, expected, f"{where}[{i}]", source)


def check_stage_loop(checkpoint: dict[str, Any], stage: str, fresh: dict[str, Any], source: object) -> None:
    """For validate, test or predict: the stage's own loop state, which Lightning restores from a checkpoint that has
    loops (one without them, weights only, restores none)."""
    loops = checkpoint.get("loops")
    if loops is None:
        return
    if not isinstance(loops, dict):
        raise CheckpointError(f"{source} is damaged: its loops state is {preview(loops)}, not a mapping")
    _check_loop_state(loops.get(f"{stage}_loop"), fresh, f"{stage}_loop", source)


def _check_loop_state(saved: Any, fresh: dict[str, Any], where: str, source: object) -> None:
    """``saved`` has every key of ``fresh`` (a new loop's state), dicts for dicts, bools for bools and counts (0 to
    :data:`MAX_COUNT`) for ints; keys a new loop lacks are only accepted inside a ``state_dict`` (a data loader's
    position, which its owner checks)."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{source} is damaged: its loop state {where} is {preview(saved)}, not a mapping")
    missing = [key for key in fresh if key not in saved]
    unknown = [key for key in saved if key not in fresh]
    if missing:
        raise CheckpointError(f"{source} is damaged: its loop state {where} has no {', '.join(map(str, missing))[:PREVIEW]}")
    if unknown and not where.endswith("state_dict"):
        raise CheckpointError(f"{source} is damaged: its loop state {where} has unknown keys {', '.join(map(str, unknown))[:PREVIEW]}")
    for key, expected in fresh.items():
        value, inner = saved[key], f"{where}.{key}"
        if isinstance(expected, dict):
            _check_loop_state(value, expected, inner, source)
        elif isinstance(expected, bool):
            if not isinstance(value, bool):
                raise CheckpointError(f"{source} is damaged: its loop state {inner} is {preview(value)}, not true or false")
        elif isinstance(expected, int) and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT):
            raise CheckpointError(f"{source} is damaged: its loop state {inner} is {preview(value)}, not a count")


def _check_optimizer_tensors(state: dict[Any, Any], parameters: list[torch.Tensor], source: object) -> None:
    """Each saved optimizer buffer belongs to one of the parameters and has its shape (or is a scalar: a step)."""
    for parameter_id, buffers in state.items():
        if not isinstance(parameter_id, int) or not 0 <= parameter_id < len(parameters) or not isinstance(buffers, dict):
            raise CheckpointError(f"{source} is damaged: its optimizer state has an entry for {preview(parameter_id)}")
        shape = parameters[parameter_id].shape
        for name, buffer in buffers.items():
            if isinstance(buffer, torch.Tensor) and buffer.dim() > 0 and buffer.shape != shape:
                raise CheckpointError(
                    f"{source} is damaged: its optimizer's {preview(name)} for parameter {parameter_id} has shape "
                    f"{list(buffer.shape)}, not {list(shape)}"
                )


def _like(value: object, default: object) -> bool:
    """Whether a saved optimizer setting has the kind of value the optimizer's own default has."""
    number = (int, float)
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, number) or isinstance(default, torch.Tensor):
        return (isinstance(value, number) and not isinstance(value, bool)) or (isinstance(value, torch.Tensor) and value.numel() == 1)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list)) and len(value) == len(default) and all(_like(v, d) for v, d in zip(value, default))
    return value is None or isinstance(value, (bool, str, *number))  # None defaults (foreach, fused): plain values
