"""Trains a few algorithms on a small binary problem and saves everything they produce, for
tests/test_devices.py to compare across device and process counts. Run as a script:

  python tests/devices_run.py OUT.npz --devices 1,2,4            # one process, each count
  python tests/devices_run.py OUT.npz --process 0 --processes 2 --port 12355   # one of two

Set the CPU device count (JAX_NUM_CPU_DEVICES) before starting it.
"""

import argparse
import os
import sys

import numpy as np

SIZES = (5, 30, 9, 17, 6, 24, 11, 8, 40, 13, 7)  # 11 nodes: places are padded on 2 and 4 devices
ALGORITHMS = ("fedavg", "mocha", "ditto")


def problem():
    from fedmtl.data import FederatedData

    rng = np.random.default_rng(3)
    xs = [rng.normal(size=(n, 4)).astype(np.float32) for n in SIZES]
    ys = [(x @ np.array([1.0, -1.0, 0.5, 0.0]) + rng.normal(size=len(x)) > 0).astype(np.int32)
          for x in xs]
    return FederatedData.from_nodes(xs, ys, num_classes=2, seed=0)


def run(devices, cohort=None, algorithms=ALGORITHMS) -> dict[str, np.ndarray]:
    """Each algorithm for 3 rounds on `devices`; flat {name: array} of state, history and
    per-node test metrics."""
    import jax
    from flax import nnx

    from fedmtl import ALGORITHMS as REGISTRY
    from fedmtl import Engine, Federation
    from fedmtl.models import MLP

    fed = Federation(rounds=3, batch_size=4, finetune_steps=2, lanes=2, rounds_per_sync=2,
                     cohort_size=cohort, devices=devices)
    out = {}
    for name in algorithms:
        model = MLP(4, (8,), 2, rngs=nnx.Rngs(0))
        engine = Engine(REGISTRY[name](model), problem(), fed)
        state, history = engine.run(engine.init())
        for i, leaf in enumerate(jax.tree.leaves(state)):
            out[f"{name}/state/{i}"] = np.asarray(leaf)
        for key, value in history.items():
            out[f"{name}/history/{key}"] = np.asarray(value)
        for kind, found in engine.evaluate(state).items():
            for metric, value in found.items():
                out[f"{name}/{kind}/{metric}"] = np.asarray(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--devices", default="1")
    parser.add_argument("--cohort", type=int, default=None)
    parser.add_argument("--process", type=int, default=None)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--port", type=int, default=12355)
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.process is not None:
        import jax

        jax.distributed.initialize(f"localhost:{args.port}", num_processes=args.processes,
                                   process_id=args.process)
        results = {"all": run(None, args.cohort, args.algorithms.split(","))}
        if args.process != 0:
            return
    else:
        results = {d: run(int(d), args.cohort, args.algorithms.split(","))
                   for d in args.devices.split(",")}
    np.savez(args.out, **{f"{d}|{k}": v for d, found in results.items()
                          for k, v in found.items()})


if __name__ == "__main__":
    main()
