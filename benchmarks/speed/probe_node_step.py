"""Cost of one local minibatch step per node when n nodes are vmapped together.

Runs `fedmtl.training.node_steps` (MLP 60-64-10, batch 10, SGD) for 100 steps on n nodes
at once, for n = 1, 10, 100, 400, and prints microseconds per step and per node-step. Flat
per-node-step cost means vmapping saves dispatch, not arithmetic, on this device.

    python benchmarks/speed/probe_node_step.py
"""

import time

import jax
import jax.numpy as jnp
import optax

from fedmtl.models import Model, build
from fedmtl.training import Schedule, node_steps, trainer

STEPS, BATCH = 100, 10
model = Model.of(build("mlp", (60,), 10))
sgd = trainer(lambda params, x: model.apply(*params, x), optax.sgd(0.05))


@jax.jit
def train(x, y, n, keys):
    def one(x, y, n, key):
        state = sgd.init((model.shared, model.personal))
        return node_steps(sgd.step, state, x, y, key, Schedule(), n=n)[1:]

    return jax.vmap(one)(x, y, n, keys)


def main():
    print(f"device: {jax.devices()[0].device_kind}")
    for nodes in (1, 10, 100, 400):
        length = STEPS * BATCH
        x = jnp.ones((nodes, length, 60))
        y = jnp.zeros((nodes, length), jnp.int32)
        n = jnp.full((nodes,), length, jnp.int32)
        keys = jax.random.split(jax.random.key(0), nodes)
        jax.block_until_ready(train(x, y, n, keys))  # compile
        times = []
        for _ in range(3):
            start = time.perf_counter()
            jax.block_until_ready(train(x, y, n, keys))
            times.append(time.perf_counter() - start)
        best = min(times) / STEPS
        print(f"{nodes:4d} nodes: {best * 1e6:8.1f} us per step, "
              f"{best / nodes * 1e6:6.2f} us per node-step")


if __name__ == "__main__":
    main()
