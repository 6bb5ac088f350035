"""The engine: runs an algorithm's per-node functions for all nodes inside one jitted round.

A round: plan who takes part and for how many steps (`fedmtl.systems`: sampling,
stragglers, dropouts, availability, the simulated clock) → on every device of the mesh
(`fedmtl.devices`, one `jax.shard_map`), deal the cohort's nodes it holds to L lanes
(`fedmtl.lanes`) → one loop in which every lane takes a `vmap`-ed `step` of its current node,
starting (`start`) and finishing (`finish`) nodes as they come → uploads [C, ...], summed over
the devices (each slot's upload comes from one of them) → local DP,
an attack, central DP (`fedmtl.privacy`) → `server_update`, whose averages go through the
round's `aggregate` (a robust rule, DP's noised mean or secure aggregation's masked sum).
Data stays ragged on the device (no per-node padding), so one compiled loop serves every node
size. Rounds are fused with `lax.scan`, so many rounds run with one device→host sync. This
module holds the only `jax.vmap` over nodes and the only `jax.jit` of the library.
"""

from fedmtl.engine.core import Engine
from fedmtl.engine.drive import curves
from fedmtl.engine.state import EVAL_BATCH, DivergenceError, EngineState, Layout
from fedmtl.federation import Federation

__all__ = ["EVAL_BATCH", "DivergenceError", "Engine", "EngineState", "Federation", "Layout",
           "curves"]
