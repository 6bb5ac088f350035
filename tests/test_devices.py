"""Nodes spread over devices and processes: the placement, the data layout, the CPU device
default, and the same results on 1, 2 or 4 devices and on 1 or 2 processes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from tiny import BASE, SIZES, assert_equal, data, host_copy, mlp

from fedmtl import Engine, fedper
from fedmtl import devices as devices_lib

HERE = Path(__file__).resolve().parent
RUN = HERE / "devices_run.py"


def _env(cpu_devices: int) -> dict:
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(cpu_devices), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "force_host_platform_device_count" not in f)
    return env


def _run(args, cpu_devices: int, timeout: int = 600):
    return subprocess.run([sys.executable, str(RUN), *args], env=_env(cpu_devices),
                          capture_output=True, text=True, timeout=timeout)


def _load(path) -> dict[str, dict[str, np.ndarray]]:
    found = np.load(path)
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in found.files:
        devices, name = key.split("|", 1)
        out.setdefault(devices, {})[name] = found[key]
    return out


def _assert_same(a: dict, b: dict, what: str) -> None:
    """Bit-identical, except Ditto's to rtol 1e-6 (see the test below)."""
    assert a.keys() == b.keys()
    for key in a:
        if key.startswith("ditto/"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7,
                                       err_msg=f"{what}: {key}")
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{what}: {key}")


# ----- placement and layout -----

@pytest.mark.parametrize("devices", [1, 2, 3, 4])
def test_placement_puts_every_node_once_and_balances_work(devices):
    rng = np.random.default_rng(0)
    work = rng.lognormal(3, 1.5, 101).astype(np.int64) + 1
    p = devices_lib.place(work, devices)
    assert p.block == -(-101 // devices) and p.placed.shape == (devices * p.block,)
    real = p.placed[p.placed < 101]
    np.testing.assert_array_equal(np.sort(real), np.arange(101))
    np.testing.assert_array_equal(p.placed[p.position], np.arange(101))
    totals = p.blocks(work).sum(axis=1)
    assert totals.max() - totals.min() <= work.max()
    counts = (p.placed.reshape(devices, p.block) < 101).sum(axis=1)
    assert counts.max() - counts.min() <= 1


def test_layout_holds_each_nodes_rows_on_its_device():
    mesh = devices_lib.mesh(None)
    d = data()
    counts = d.train.counts
    p = devices_lib.place(counts, mesh.devices.size)
    blocks, where = devices_lib.layout(mesh, p, d.train.x, d.train.y, counts)
    x, y = (np.asarray(a) for a in blocks.take(np.arange(len(blocks.source))))
    np.testing.assert_array_equal(x[where], d.train.x)
    np.testing.assert_array_equal(y[where], d.train.y)
    width = len(x) // p.devices
    offsets, got = np.asarray(blocks.offsets), np.asarray(blocks.counts)
    for k in range(len(counts)):  # node k's rows sit where its place says, in order
        place = p.position[k]
        start = (place // p.block) * width + offsets[place]
        assert got[place] == counts[k]
        np.testing.assert_array_equal(x[start:start + counts[k]], d.train.node(k)[0])


def test_cpu_devices_read_the_callers_data_in_place():
    """All CPU devices share the host's memory: the engine's data is the caller's arrays (no
    second copy of the data set), and an unaligned array is copied once, not per device."""
    mesh = devices_lib.mesh(None)
    d = data()
    p = devices_lib.place(d.train.counts, mesh.devices.size)
    blocks, _ = devices_lib.layout(mesh, p, d.train.x, d.train.y, d.train.counts)
    for a, host in ((blocks.x, d.train.x), (blocks.y, d.train.y)):
        assert {s.data.unsafe_buffer_pointer() for s in a.addressable_shards} == {
            host.ctypes.data}
    shifted = np.empty(d.train.x.size + 1, np.float32)[1:].reshape(d.train.x.shape)
    shifted[...] = d.train.x  # 4 bytes off alignment
    blocks, _ = devices_lib.layout(mesh, p, shifted, d.train.y, d.train.counts)
    pointers = {s.data.unsafe_buffer_pointer() for s in blocks.x.addressable_shards}
    assert len(pointers) == 1 and shifted.ctypes.data not in pointers
    np.testing.assert_array_equal(np.asarray(blocks.x), d.train.x)


def test_too_many_devices_is_a_named_error():
    with pytest.raises(devices_lib.DevicesError, match="ask for 1"):
        devices_lib.mesh(len(jax.devices()) + 1)
    with pytest.raises(devices_lib.DevicesError):
        devices_lib.mesh(0)


# ----- the CPU device default -----

def _device_count(env_extra: dict, code: str = "") -> int:
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.update(JAX_PLATFORMS="cpu", **env_extra)
    out = subprocess.run([sys.executable, "-c", code + "import fedmtl, jax; "
                          "print(len(jax.devices()))"],
                         env=env, capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout.split()[-1])


def test_fedmtl_uses_one_cpu_device_per_core_unless_told_otherwise():
    assert _device_count({}) == devices_lib.cpu_cores()
    assert _device_count({"JAX_NUM_CPU_DEVICES": "3"}) == 3
    assert _device_count({"XLA_FLAGS": "--xla_force_host_platform_device_count=5"}) == 5
    assert _device_count({}, "import jax; jax.config.update('jax_num_cpu_devices', 1); ") == 1


# ----- the same results on any number of devices -----

def test_one_and_every_local_device_give_identical_results():
    """In process, on the suite's devices, with the tiny problem (CI's second pass runs it
    with JAX_NUM_CPU_DEVICES=2; the default suite has one device per process)."""
    if len(jax.devices()) < 2:
        pytest.skip("one device in this process (CI reruns it with JAX_NUM_CPU_DEVICES=2)")
    fed = BASE._replace(lanes=2)
    one = Engine(fedper(mlp()), data(), fed._replace(devices=1))
    every = Engine(fedper(mlp()), data(), fed)
    assert every.devices == len(jax.devices()) and one.devices == 1
    a, ha = one.run(one.init())
    a = host_copy(a)
    b, hb = every.run(every.init())
    assert_equal(a, host_copy(b))
    assert_equal(ha, hb)
    assert_equal(one.evaluate(a), every.evaluate(b))
    assert {leaf.shape[0] for leaf in jax.tree.leaves(a.nodes)} == {len(SIZES)}  # data order


def test_one_and_two_devices_give_identical_results(tmp_path):
    """The default suite's quick check: FedAvg with fine-tuning and MOCHA (per-node server
    messages) on 1 and 2 devices, bit-identical (the full set is the slow test below)."""
    out = tmp_path / "devices.npz"
    done = _run([str(out), "--devices", "1,2", "--algorithms", "fedavg,mocha"], cpu_devices=2)
    assert done.returncode == 0, done.stderr[-3000:]
    found = _load(out)
    _assert_same(found["1"], found["2"], "1 vs 2 devices")


@pytest.mark.slow
@pytest.mark.parametrize("cohort", [None, 4])
def test_one_two_and_four_devices_give_identical_results(tmp_path, cohort):
    """fedavg (fine-tuned), mocha (per-node server messages) and ditto on 11 nodes of a
    binary task (places padded on 2 and 4 devices; AUC from rows laid out by place); every
    node or a cohort of 4. Each slot trains on one device with the same lanes per device and
    the device sums add zeros, so the results are bit-identical, except Ditto's: XLA fuses
    its proximal term's gradient differently in the programs for different block shapes,
    which moves its parameters by ~1 ulp (checked to rtol 1e-6)."""
    out = tmp_path / "devices.npz"
    args = [str(out), "--devices", "1,2,4"] + ([] if cohort is None else ["--cohort",
                                                                           str(cohort)])
    done = _run(args, cpu_devices=4)
    assert done.returncode == 0, done.stderr[-3000:]
    found = _load(out)
    _assert_same(found["1"], found["2"], "1 vs 2 devices")
    _assert_same(found["1"], found["4"], "1 vs 4 devices")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_one_federation_like_one_process(tmp_path):
    """`jax.distributed` on localhost: two processes with one CPU device each train one
    federation together and agree exactly with one process on two devices."""
    single = tmp_path / "single.npz"
    done = _run([str(single), "--devices", "2"], cpu_devices=2)
    assert done.returncode == 0, done.stderr[-3000:]
    both = tmp_path / "both.npz"
    port = _free_port()
    workers = [subprocess.Popen(
        [sys.executable, str(RUN), str(both), "--process", str(i), "--processes", "2",
         "--port", str(port)], env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    _assert_same(_load(single)["2"], _load(both)["all"], "1 process vs 2 processes")
