"""`Federation`: how a federation runs (rounds, cohorts, local work, the systems model,
robust aggregation, attacks, privacy, secure aggregation), as one value the engine takes."""

from __future__ import annotations

from typing import NamedTuple

from fedmtl.attacks import Attack
from fedmtl.privacy import Privacy
from fedmtl.robust import Aggregator
from fedmtl.secagg import SecureAggregation
from fedmtl.systems import Systems, SystemsError


class Federation(NamedTuple):
    """How the federation runs.

    Attributes:
      rounds: communication rounds.
      cohort_size: nodes sampled per round (None: all), uniformly without replacement unless
        `systems` samples otherwise.
      local_epochs: E passes over a node's data per round.
      batch_size: B; node k takes ceil(n_k / B) · E steps per round.
      finetune_steps: local steps that personalize a global model before testing (0: none).
      seed: seeds cohorts, shuffling and fine-tuning.
      lanes: nodes trained side by side on each device (None: the count that minimises
        the slowest device's makespan × (lanes + lane_step_cost)).
      lane_step_cost: fixed cost of one loop step, in units of one lane's step (None: 4 on a
        CPU, where cost grows with lanes; 2048 on an accelerator, where a wide step is cheap).
      rounds_per_sync: rounds fused into one jitted `lax.scan` between host syncs.
      systems: who is available and sampled, stragglers, dropouts and the simulated clock
        (`fedmtl.systems.Systems`; the default is a plain federation).
      aggregator: the rule that replaces the weighted mean wherever an algorithm averages
        uploads (`fedmtl.robust`; None: the weighted mean).
      attack: which nodes lie and how (`fedmtl.attacks`; None: nobody).
      privacy: differential privacy of the uploads (`fedmtl.privacy.central` or `.local`;
        None: none).
      secure_aggregation: the server learns only the sum of the uploads
        (`fedmtl.secagg.SecureAggregation`: SecAgg / SecAgg+; None: it sees each upload).
      devices: the devices the nodes are spread over (`fedmtl.devices.mesh`): None for every
        device of every process (`jax.devices()`; on a CPU, one per core by default), an int
        for the first that many, or a sequence of `jax.Device`. Results do not depend on it.
      eval_every: k > 0 tests every node's models of every kind after every k-th round, inside
        the fused scan, into the history's learning curves (`Engine.run`); 0: only at the end.
    """

    rounds: int = 50
    cohort_size: int | None = None
    local_epochs: int = 1
    batch_size: int = 10
    finetune_steps: int = 0
    seed: int = 0
    lanes: int | None = None
    lane_step_cost: float | None = None
    rounds_per_sync: int = 10
    systems: Systems = Systems()
    aggregator: Aggregator | None = None
    attack: Attack | None = None
    privacy: Privacy | None = None
    secure_aggregation: SecureAggregation | None = None
    devices: int | tuple | None = None
    eval_every: int = 0



def check(fed: Federation, num_nodes: int) -> None:
    """Every field of `fed` for `num_nodes` nodes.

    Raises:
      ValueError: naming the field and what was expected.
      SystemsError: `systems` is not a `Systems`.
    """
    checks = [
        (fed.rounds >= 0, f"rounds must be >= 0, got {fed.rounds}"),
        (fed.local_epochs >= 1, f"local_epochs must be >= 1, got {fed.local_epochs}"),
        (fed.batch_size >= 1, f"batch_size must be >= 1, got {fed.batch_size}"),
        (fed.finetune_steps >= 0, f"finetune_steps must be >= 0, got {fed.finetune_steps}"),
        (fed.lanes is None or fed.lanes >= 1, f"lanes must be >= 1, got {fed.lanes}"),
        (fed.lane_step_cost is None or fed.lane_step_cost >= 0,
         f"lane_step_cost must be >= 0, got {fed.lane_step_cost}"),
        (fed.rounds_per_sync >= 1, f"rounds_per_sync must be >= 1, got {fed.rounds_per_sync}"),
        (fed.eval_every >= 0, f"eval_every must be >= 0 (0: no learning curves), got "
                              f"{fed.eval_every}"),
        (
            fed.cohort_size is None or 1 <= fed.cohort_size <= num_nodes,
            f"cohort_size must be in [1, {num_nodes}] (the number of nodes), "
            f"got {fed.cohort_size}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    if not isinstance(fed.systems, Systems):
        raise SystemsError(f"Federation.systems must be a fedmtl.Systems, got "
                           f"{type(fed.systems).__name__}")
