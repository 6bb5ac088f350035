"""Is a run without a systems model bit-identical to an older commit's run?

Runs fedavg, mocha, scaffold, ditto and ifca on Synthetic(1,1) (30 nodes, 4 rounds, E = 2,
fine-tuning 3 steps), with every node and with a cohort of 7, once on this working tree and
once on `--base` (checked out into a temporary git worktree), and compares the final server
and node states, the per-round training losses and every per-node test metric exactly.

    python benchmarks/systems/neutral_check.py --base 283efb3   # the commit before issue 11
"""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALGORITHMS = ("fedavg", "mocha", "scaffold", "ditto", "ifca")


def snapshot(out: str) -> None:
    """The runs of this checkout (whichever `fedmtl` is first on the path), pickled to `out`."""
    import jax
    import numpy as np
    from flax import nnx

    import fedmtl

    data = fedmtl.synthetic(1, 1, num_nodes=30, seed=0)
    runs = {}
    for name in ALGORITHMS:
        model = fedmtl.MLP(data.feature_shape[0], (16,), data.num_classes, rngs=nnx.Rngs(0))
        algo = fedmtl.ALGORITHMS[name](model, local_optimizer=0.05)
        for cohort in (None, 7):
            fed = fedmtl.Federation(rounds=4, cohort_size=cohort, local_epochs=2,
                                    finetune_steps=3, rounds_per_sync=2)
            engine = fedmtl.Engine(algo, data, fed)
            state, history = engine.run(engine.init())
            runs[(name, cohort)] = (jax.tree.map(np.asarray, (state.server, state.nodes)),
                                    np.asarray(history["train_loss"]), engine.evaluate(state))
    with open(out, "wb") as f:
        pickle.dump(runs, f)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="283efb3", help="the commit to compare against")
    parser.add_argument("--snapshot", help=argparse.SUPPRESS)  # internal: write one snapshot
    args = parser.parse_args()
    if args.snapshot:
        snapshot(args.snapshot)
        return 0
    import jax
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree),
                        args.base], check=True)
        try:
            files = {}
            for label, path in (("base", tree), ("here", ROOT)):
                files[label] = Path(tmp) / f"{label}.pkl"
                subprocess.run([sys.executable, __file__, "--snapshot", str(files[label])],
                               cwd=path, env={"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin"},
                               check=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False)
        base, here = (pickle.loads(files[k].read_bytes()) for k in ("base", "here"))
    same = True
    for key in base:
        a, b = jax.tree.leaves(base[key]), jax.tree.leaves(here[key])
        equal = len(a) == len(b) and all(np.array_equal(x, y, equal_nan=True)
                                         for x, y in zip(a, b, strict=True))
        same &= equal
        name, cohort = key
        print(f"{name:9s} cohort {cohort or 'all':>3}: "
              f"{'bit-identical' if equal else 'DIFFERENT'}")
    print(f"base {args.base}: {'every run bit-identical' if same else 'runs differ'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
