"""Checkpoints (`fedmtl.checkpoints`): a saved and restored run continues bit for bit as if
never stopped, whatever the chunk lengths; old rounds are pruned; a killed save is never
restored; wrong rounds and wrong templates fail with errors that say what is wrong."""

import functools
import logging
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import BASE, assert_equal, data, host_copy, mlp

from fedmtl import algorithms
from fedmtl.checkpoints import CheckpointError, Checkpoints
from fedmtl.engine import Engine
from fedmtl.engine.state import EngineState

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _engine(name: str, rounds_per_sync: int) -> Engine:
    algorithm = algorithms.ALGORITHMS[name](mlp(), local_optimizer=0.1)
    return Engine(algorithm, data(), BASE._replace(rounds_per_sync=rounds_per_sync))


def _state(round_: int, nodes: int = 3) -> EngineState:
    """A small hand-made state: server {w [2, 2]}, nodes {head [N, 2]}, scalars, seed [2]."""
    return EngineState(
        server={"w": jnp.full((2, 2), float(round_))},
        nodes={"head": jnp.arange(2.0 * nodes).reshape(nodes, 2) + round_},
        round=jnp.asarray(round_, jnp.int32), clock=jnp.asarray(0.5, jnp.float32),
        clip_norm=jnp.asarray(1.0, jnp.float32), seed=jnp.asarray([0, 7], jnp.uint32))


# ----- a resumed run is the uninterrupted run -----


@pytest.mark.parametrize("first, then", [
    (2, 2),  # chunks 2 + 2 against one chunk of 4: two compilations
    pytest.param(3, 2, marks=pytest.mark.slow),  # 3 + 2 against 5: three
])
def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path, first, then):
    """rounds_per_sync=10: each run is one fused chunk, so the resumed run's chunks have other
    lengths than the uninterrupted run's (a different compiled scan) and still agree exactly."""
    engine = _engine("mocha", 10)  # a server with state of its own (W, Ω, round) and heads
    state, history = engine.run(engine.init(), first)
    history["per_node"] = np.random.default_rng(0).normal(size=(5, first))  # [N, E], float64
    saved = host_copy((state, history))
    with Checkpoints(tmp_path) as ckpt:
        ckpt.save(state, history, {"algorithm": "mocha", "fingerprint": "abc"})
        assert ckpt.latest() == first
    with Checkpoints(tmp_path) as ckpt:  # as a new process would open it
        template = engine.init()
        restored, rhistory, meta = ckpt.restore(template)
    assert meta == {"algorithm": "mocha", "fingerprint": "abc"}
    assert jax.tree.structure(restored) == jax.tree.structure(template)
    for got, want, like in zip(jax.tree.leaves(restored), jax.tree.leaves(saved[0]),
                               jax.tree.leaves(template), strict=True):
        assert isinstance(got, jax.Array) and got.sharding == like.sharding
        assert got.dtype == want.dtype == like.dtype
        np.testing.assert_array_equal(np.asarray(got), want)
    assert rhistory.keys() == saved[1].keys()
    for key, want in saved[1].items():
        assert rhistory[key].dtype == want.dtype
        np.testing.assert_array_equal(rhistory[key], want)

    resumed, more = engine.run(restored, then)
    straight, whole = engine.run(engine.init(), first + then)
    assert_equal(resumed, straight)
    del rhistory["per_node"]
    assert rhistory.keys() == more.keys() == whole.keys()
    for key, want in whole.items():
        np.testing.assert_array_equal(np.concatenate([rhistory[key], more[key]], axis=-1), want)


# ----- what a checkpoint directory holds -----


def test_keep_prunes_older_rounds_and_latest_of_an_empty_directory_is_none(tmp_path):
    with Checkpoints(tmp_path, keep=2) as ckpt:
        assert ckpt.latest() is None
        for round_ in (1, 2, 5):
            ckpt.save(_state(round_), {"train_loss": np.zeros(round_, np.float32),
                                       "eval/personalized.accuracy": np.ones((3, round_))}, {})
        assert ckpt.rounds() == [2, 5] and ckpt.latest() == 5
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["2", "5"]
        state, history, meta = ckpt.restore(_state(0), round=2)
        assert int(state.round) == 2 and history["train_loss"].shape == (2,) and meta == {}
        np.testing.assert_array_equal(history["eval/personalized.accuracy"], np.ones((3, 2)))
        assert_equal(ckpt.restore(_state(0))[0], _state(5))


def test_empty_history_and_numpy_templates_restore(tmp_path):
    with Checkpoints(tmp_path) as ckpt:
        ckpt.save(_state(3), {}, {"note": (1, 2)})
        state, history, meta = ckpt.restore(host_copy(_state(0)))
    assert history == {} and meta == {"note": [1, 2]}  # JSON: tuples come back as lists
    assert all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(state))
    assert_equal(state, _state(3))


def test_missing_rounds_raise_checkpoint_error(tmp_path):
    with Checkpoints(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match="no complete checkpoint"):
            ckpt.restore(_state(0))
        ckpt.save(_state(4), {}, {})
        with pytest.raises(CheckpointError, match=r"round 3: no such checkpoint \(complete "
                                                  r"rounds: 4\)") as err:
            ckpt.restore(_state(0), round=3)
        assert str(tmp_path) in str(err.value)


def test_mismatched_structure_says_what_differs(tmp_path):
    with Checkpoints(tmp_path) as ckpt:
        ckpt.save(_state(1, nodes=3), {}, {})
        with pytest.raises(CheckpointError, match=r"round 1: the checkpoint does not fit the "
                           r"template: 1 leaves of another shape or dtype \(nodes.head: saved "
                           r"float32\[3, 2\], template float32\[4, 2\]\)"):
            ckpt.restore(_state(0, nodes=4))
        other = _engine("fedavg", 1).init()  # another algorithm's state
        with pytest.raises(CheckpointError) as err:
            ckpt.restore(other)
    message = str(err.value)
    assert "template leaves not in the checkpoint (server.params.body.0.bias.value" in message
    assert "2 saved leaves not in the template (nodes.head, server.w)" in message


def test_save_refuses_bad_meta_history_and_old_rounds(tmp_path):
    with Checkpoints(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match="meta is not JSON-able"):
            ckpt.save(_state(1), {}, {"array": np.zeros(2)})
        with pytest.raises(CheckpointError, match="history keys must be metric names"):
            ckpt.save(_state(1), {1: np.zeros(2)}, {})
        ckpt.save(_state(2), {}, {})
        with pytest.raises(CheckpointError, match=r"round 2: not newer than the newest "
                                                  r"checkpoint \(round 2\)"):
            ckpt.save(_state(2), {}, {})
        assert ckpt.rounds() == [2]
    with pytest.raises(CheckpointError, match="keep=0"):
        Checkpoints(tmp_path, keep=0)


def test_orbax_info_logging_is_silenced_and_nothing_else_is(tmp_path):
    absl = logging.getLogger("absl")
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    level = absl.level
    absl.addHandler(handler)
    absl.setLevel(logging.DEBUG)
    try:
        with Checkpoints(tmp_path) as ckpt:
            ckpt.save(_state(1), {}, {})
            ckpt.restore(_state(0))
        absl.info("not from orbax")
    finally:
        absl.removeHandler(handler)
        absl.setLevel(level)
    assert not [r for r in records if "orbax" in r.pathname and r.levelno < logging.WARNING]
    assert [r.getMessage() for r in records][-1:] == ["not from orbax"]


# ----- a killed save -----

_CHILD = """
import os, signal, sys
from pathlib import Path
import numpy as np
from fedmtl.checkpoints import Checkpoints
assert not any(m.startswith("orbax") for m in sys.modules), "importing fedmtl imported orbax"
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from fedmtl import devices
from fedmtl.engine.state import EngineState

mesh = devices.mesh()
assert mesh.devices.size == 2, mesh
R, S = devices.replicated(mesh), devices.sharded(mesh)

def state(round_, nodes_sharding):
    put = lambda x, s=R: jax.device_put(x, s)
    return EngineState({"w": put(jnp.full((2, 2), float(round_)))},
                       {"head": put(jnp.arange(8.0).reshape(4, 2) + round_, nodes_sharding)},
                       put(jnp.asarray(round_, jnp.int32)), put(jnp.asarray(0.5)),
                       put(jnp.asarray(1.0)), put(jnp.asarray([0, 7], jnp.uint32)))

directory = Path(sys.argv[1])
ckpt = Checkpoints(directory)
ckpt.save(state(1, S), {"train_loss": np.ones(1, np.float32)}, {})
for sharding in (S, R):  # restored onto the template's devices, split or replicated
    got = ckpt.restore(state(0, sharding))[0]
    assert got.nodes["head"].sharding == sharding and got.server["w"].sharding == R
    np.testing.assert_array_equal(got.nodes["head"], np.arange(8.0).reshape(4, 2) + 1)
print("restored onto the template's shardings", flush=True)

rename = os.rename
def killed_before_commit(src, dst, *args, **kwargs):
    if Path(dst) == directory / "2":  # everything is written, the commit is next
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(src, dst, *args, **kwargs)
os.rename = killed_before_commit
ckpt.save(state(2, S), {"train_loss": np.ones(2, np.float32)}, {})
print("the save was not killed", flush=True)
"""


def test_a_save_killed_before_its_commit_is_never_restored(tmp_path):
    """A 2-device child saves round 1 (checking restores land on the template's shardings),
    then is killed at the last moment of its round-2 save: after everything is written,
    before orbax's atomic rename commits it."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu")
    child = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert "restored onto the template's shardings" in child.stdout, child.stderr[-3000:]
    assert child.returncode == -9, (
        "the child was not killed mid-save: orbax no longer commits a round by renaming its "
        f"temporary folder?\n{child.stdout}\n{child.stderr[-3000:]}")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("2")], "nothing half-written"
    with Checkpoints(tmp_path) as ckpt:
        assert ckpt.latest() == 1 and ckpt.rounds() == [1]
        with pytest.raises(CheckpointError, match="round 2: no such checkpoint"):
            ckpt.restore(_state(0, nodes=4), round=2)
        state, history, _ = ckpt.restore(_state(0, nodes=4))
        assert int(state.round) == 1 and history["train_loss"].shape == (1,)
        ckpt.save(_state(2, nodes=4), {}, {})  # the resumed run saves round 2 again
        assert ckpt.rounds() == [1, 2]
        assert_equal(ckpt.restore(_state(0, nodes=4))[0], _state(2, nodes=4))


def test_meta_reads_without_arrays_and_clear_starts_afresh(tmp_path):
    with Checkpoints(tmp_path / "c") as saved:
        assert saved.meta() is None
        saved.save(_state(4), {}, {"algorithm": "fedavg", "fingerprint": "f"})
        assert saved.meta() == {"algorithm": "fedavg", "fingerprint": "f"}
        saved.clear()
        assert saved.rounds() == [] and saved.meta() is None
        saved.save(_state(1), {}, {})  # a fresh run goes forward from round 1 again
        assert saved.rounds() == [1]


def test_compare_with_checkpoints_twice_starts_afresh_and_resumes(tmp_path):
    from fedmtl.experiment import Checkpointing, compare

    d, algo = data(), algorithms.fedavg(mlp())
    fed = BASE._replace(rounds=3)
    first = compare([algo], d, fed, checkpointing=Checkpointing(tmp_path, every=2))
    again = compare([algo], d, fed, checkpointing=Checkpointing(tmp_path, every=2))
    resumed = compare([algo], d, fed, checkpointing=Checkpointing(tmp_path, every=2,
                                                                  resume=True))
    for other in (again, resumed):
        assert_equal(other.results[0].history, first.results[0].history)
        assert_equal(other.results[0].per_node, first.results[0].per_node)
    with pytest.raises(CheckpointError, match="past this run's 2 rounds"):
        compare([algo], d, fed._replace(rounds=2),
                checkpointing=Checkpointing(tmp_path, every=2, resume=True))
