"""A run's checkpoints (`Checkpoints`): the engine state, the history so far and a small JSON
record per saved round, written atomically by orbax-checkpoint and restored onto the devices of
a template state."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

if TYPE_CHECKING:
    from fedmtl.engine.state import EngineState

_ARRAYS, _META = "arrays", "meta"  # the two items of each round's folder
_SHOWN = 3  # differences named in a mismatch message


class CheckpointError(ValueError):
    """A checkpoint that cannot be saved or restored: the message names the directory, the
    round and what was wrong (missing, or not the template's structure)."""


class _QuietOrbax(logging.Filter):
    """Drops orbax's INFO and DEBUG records (it narrates every step of every save through absl
    logging, which a user's `logging.basicConfig(level=INFO)` would print); its warnings and
    errors, and every other library's records, pass."""

    _PART = f"{os.sep}orbax{os.sep}"

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or self._PART not in record.pathname


def _quiet_orbax() -> None:
    absl = logging.getLogger("absl")  # where absl.logging, and so orbax, logs
    if not any(isinstance(f, _QuietOrbax) for f in absl.filters):
        absl.addFilter(_QuietOrbax())


def _flat(tree) -> tuple[dict[str, Any], Any]:
    """tree -> ({dotted leaf path: leaf}, treedef), e.g. 'server.params.head.kernel.value'."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flat = {}
    for path, leaf in pairs:
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        if name in flat:
            raise CheckpointError(f"two leaves of the state are both named {name!r}")
        flat[name] = leaf
    return flat, treedef


def _describe(shape, dtype) -> str:
    return f"{np.dtype(dtype).name}[{', '.join(map(str, shape))}]"


def _differences(saved: dict, template: dict[str, Any]) -> list[str]:
    """What keeps a checkpoint's state leaves (name -> metadata with shape, dtype) from filling
    the template's (name -> leaf): a few names of each kind of difference."""

    def some(names: list[str]) -> str:
        more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
        return ", ".join(names[:_SHOWN]) + more

    missing = [n for n in template if n not in saved]
    extra = sorted(n for n in saved if n not in template)
    unlike = [f"{n}: saved {_describe(saved[n].shape, saved[n].dtype)}, template "
              f"{_describe(template[n].shape, template[n].dtype)}" for n in template
              if n in saved and (tuple(saved[n].shape) != tuple(template[n].shape)
                                 or np.dtype(saved[n].dtype) != np.dtype(template[n].dtype))]
    out = []
    if missing:
        out.append(f"{len(missing)} template leaves not in the checkpoint ({some(missing)})")
    if extra:
        out.append(f"{len(extra)} saved leaves not in the template ({some(extra)})")
    if unlike:
        out.append(f"{len(unlike)} leaves of another shape or dtype ({some(unlike)})")
    return out


def _target(leaf):
    """What orbax restores a template leaf as: a jax.Array with the leaf's sharding (e.g.
    replicated over the engine's mesh), or a numpy array for a numpy leaf."""
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        dtype = getattr(leaf, "dtype", None)
        return np.empty(np.shape(leaf), np.asarray(leaf).dtype if dtype is None else dtype)
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


class Checkpoints:
    """A run's checkpoints in `directory` (one subfolder per saved round, written by orbax
    atomically: a killed save leaves no readable half-checkpoint), keeping the latest `keep`
    (default 2).

    Example:
      >>> with Checkpoints(results / "checkpoints") as ckpt:
      ...     ckpt.save(state, history, {"algorithm": "fedavg"})   # after a chunk of rounds
      ...     state, history, meta = ckpt.restore(engine.init())   # the newest round

    Each round's folder holds the state's leaves by their dotted path (e.g.
    `server.params.head.kernel.value`, `nodes.head.bias.value` [N, ...], `round`, `seed` [2]),
    the history's arrays by metric name, and `meta` as JSON. Restoring checks the saved leaves
    against a template state (names, shapes, dtypes) and places them on its devices.
    """

    def __init__(self, directory: Path, keep: int = 2):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise CheckpointError(f"keep={keep!r}: keep at least 1 checkpoint")
        _quiet_orbax()
        import orbax.checkpoint as ocp  # slow to import: only when checkpoints are used

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self.keep = keep
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=False,  # the engine donates the state it runs on next
            cleanup_tmp_directories=True,  # what killed saves left behind
        )
        # handlers named up front: a fresh manager (a resumed process) reads metadata with them
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            _ARRAYS: ocp.StandardCheckpointHandler(), _META: ocp.JsonCheckpointHandler()})

    def save(self, state: EngineState, history: dict[str, np.ndarray], meta: dict) -> None:
        """Saves `state` as round int(state.round) and blocks until it is written.

        Args:
          state: the engine state after its round (leaves on any devices; a sweep's state with
            a leading seed axis [S] is saved as the round of its first seed).
          history: metric -> array [..., rounds so far] (any shapes, e.g. [R] and [N, E]; may be
            empty).
          meta: a small JSON-able dict, e.g. {"algorithm": "fedavg", "fingerprint": "..."}.

        Raises:
          CheckpointError: meta is not JSON-able, a history key is not a string, or the round is
            not newer than the newest saved one.
        """
        round_ = int(np.ravel(jax.device_get(state.round))[0])
        where = f"{self.directory}, round {round_}"
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: meta is not JSON-able ({e})") from None
        bad = [k for k in history if not isinstance(k, str)]
        if bad:
            raise CheckpointError(f"{where}: history keys must be metric names (str), not "
                                  f"{bad[0]!r}")
        newest = self.latest()
        if newest is not None and round_ <= newest:
            raise CheckpointError(
                f"{where}: not newer than the newest checkpoint (round {newest}); a run's "
                "checkpoints go forward: resume from the newest, or save to another directory")
        flat, _ = _flat(state)
        arrays = {"state": flat, "history": {k: np.asarray(v) for k, v in history.items()}}
        ocp = self._ocp
        self._manager.save(round_, force=True, args=ocp.args.Composite(
            **{_ARRAYS: ocp.args.StandardSave(arrays), _META: ocp.args.JsonSave(meta)}))
        self._manager.wait_until_finished()

    def rounds(self) -> list[int]:
        """The complete rounds on disk, oldest first."""
        self._manager.reload()  # another process (a killed run) may have written them
        return sorted(self._manager.all_steps())

    def latest(self) -> int | None:
        """The newest complete round, None if none."""
        rounds = self.rounds()
        return rounds[-1] if rounds else None

    def restore(self, template: EngineState, round: int | None = None
                ) -> tuple[EngineState, dict[str, np.ndarray], dict]:
        """Round `round` (default: the newest) as (state, history, meta).

        Args:
          template: a state of the run's structure, e.g. `engine.init()` (its values are not
            read: a donated state serves too); leaves without a sharding (numpy arrays,
            `jax.ShapeDtypeStruct`s without one) come back as numpy arrays.

        Returns:
          state with the template's structure, dtypes and shardings; history and meta as saved
          (JSON turns tuples into lists).

        Raises:
          CheckpointError: no such round, or its state does not fit the template (e.g. a
            checkpoint of another algorithm); the message says what differs.
        """
        rounds = self.rounds()
        if round is None:
            if not rounds:
                raise CheckpointError(f"{self.directory}: no complete checkpoint to restore")
            round = rounds[-1]
        where = f"{self.directory}, round {round}"
        if round not in rounds:
            have = ", ".join(map(str, rounds)) or "none"
            raise CheckpointError(f"{where}: no such checkpoint (complete rounds: {have})")
        ocp = self._ocp
        saved = self._manager.item_metadata(round)[_ARRAYS].tree
        flat, treedef = _flat(template)
        differences = _differences(saved["state"], flat)
        if differences:
            raise CheckpointError(f"{where}: the checkpoint does not fit the template: "
                                  + "; ".join(differences))
        target = {"state": {name: _target(leaf) for name, leaf in flat.items()},
                  "history": {name: np.empty(m.shape, m.dtype)
                              for name, m in saved.get("history", {}).items()}}
        restored = self._manager.restore(round, args=ocp.args.Composite(
            **{_ARRAYS: ocp.args.StandardRestore(target), _META: ocp.args.JsonRestore()}))
        arrays = restored[_ARRAYS]
        state = jax.tree_util.tree_unflatten(treedef, [arrays["state"][n] for n in flat])
        return state, dict(arrays["history"]), restored[_META]

    def meta(self, round: int | None = None) -> dict | None:
        """The meta saved with round `round` (default: the newest), without reading its
        arrays; None when there is no checkpoint."""
        rounds = self.rounds()
        if round is None:
            round = rounds[-1] if rounds else None
        if round is None or round not in rounds:
            return None
        restored = self._manager.restore(round, args=self._ocp.args.Composite(
            **{_META: self._ocp.args.JsonRestore()}))
        return restored[_META]

    def clear(self) -> None:
        """Deletes every saved round (a fresh run's start: its checkpoints go forward from
        round 1). Only orbax's round folders are removed."""
        for round_ in self.rounds():
            self._manager.delete(round_)

    def close(self) -> None:
        """Waits for pending work and releases orbax's threads."""
        self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
