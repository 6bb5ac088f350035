"""What the engine makes of a federation's privacy and secure aggregation at construction:
the DP mechanism (z calibrated), secure aggregation's rule for the cohort's slots, the named
errors for what cannot be protected, and the guarantee a run reports."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedmtl import privacy as privacy_lib
from fedmtl import robust
from fedmtl import secagg as secagg_lib
from fedmtl.algorithms import Algorithm
from fedmtl.privacy import PrivacyError


def mechanism(fed, name: str, upload_shapes, counts: np.ndarray,
              expected: float) -> privacy_lib.Mechanism | None:
    """The federation's DP mechanism (None without privacy, or when the algorithm uploads
    nothing).

    Args:
      fed: the `Federation`; name: the algorithm's; upload_shapes: one node's upload;
      counts: training examples per node [N]; expected: a round's expected reporters.

    Raises:
      PrivacyError: a setting that cannot work, central DP with a robust rule, an upload
        with whole numbers (noise cannot cover them), a target ε out of reach.
    """
    p = fed.privacy
    if p is None:
        return None
    privacy_lib.check(p)
    if not jax.tree.leaves(upload_shapes):  # nothing leaves the nodes (local training)
        return None
    if p.where == "central" and fed.aggregator is not None:
        raise PrivacyError(
            f"privacy: central DP averages the clipped uploads with its own noised mean; "
            f"it cannot be combined with the {fed.aggregator.name} rule (local DP can)")
    ints = privacy_lib.integer_leaves(upload_shapes)
    if ints:
        raise PrivacyError(f"privacy: {name} uploads whole numbers ({', '.join(ints)}), "
                           "which clipping and Gaussian noise cannot cover")
    round_, inclusion = privacy_lib.accounted_round(p, fed.systems, fed.cohort_size,
                                                    len(counts))
    sizes = np.ones(len(counts)) if fed.systems.sampling == "weighted" else counts
    return privacy_lib.resolve(p, round_, fed.rounds, expected, sizes, inclusion)


def secure_rule(fed, algorithm: Algorithm, server_shapes: Callable, upload_shapes, cohort: int,
                expected: float) -> robust.Aggregator | None:
    """Secure aggregation's "secure_mean" rule for the cohort's C slots (None without it);
    server_shapes() gives the server state's shapes.

    Raises:
      SecAggError: a configuration that cannot work, a robust rule or central DP beside it
        (both need what it hides), or an algorithm whose server keeps or sums parts of each
        upload outside its average (found by tracing `server_update` once, without running
        it).
    """
    sa = fed.secure_aggregation
    if sa is None:
        return None
    if fed.aggregator is not None:
        raise secagg_lib.SecAggError(
            f"secure aggregation shows the server only the sum of the uploads; the "
            f"{fed.aggregator.name} rule needs each of them")
    if fed.privacy is not None and fed.privacy.where == "central":
        raise secagg_lib.SecAggError(
            "central DP noises the sum at the server, which secure aggregation does not "
            "reveal to it; use local DP with secure aggregation (distributed noise is not "
            "built)")
    rule = secagg_lib.aggregator(sa, cohort, fed.seed)
    rule.check(max(1, round(expected)))

    def kept(rows, weights):
        raise secagg_lib.SecAggError(
            f"{algorithm.name} keeps or sums parts of each node's upload outside its average, "
            "which secure aggregation would have to reveal to the server")

    probe = lambda uploads, weights: robust.mean().aggregate(uploads, weights, None)
    probe.release = kept
    stacked = lambda shape, dtype: jax.ShapeDtypeStruct((cohort, *shape), dtype)
    uploads = jax.tree.map(lambda s: stacked(s.shape, s.dtype), upload_shapes)
    jax.eval_shape(lambda s, u, w, i: algorithm.server_update(s, u, w, i, aggregate=probe),
                   server_shapes(), uploads, stacked((), jnp.float32), stacked((), jnp.int32))
    return rule


def report(p, m: privacy_lib.Mechanism | None, rounds: int) -> dict:
    """The run's privacy guarantee after `rounds` rounds ({} without privacy): where the
    noise is added, z, S, δ, ε by the setting's accountant and the accountant's view of a
    round; ε = 0 when the algorithm uploads nothing."""
    if p is None:
        return {}
    if m is None:
        return {"where": p.where, "delta": p.delta, "epsilon": 0.0, "rounds": rounds,
                "sampling": "nothing uploaded"}
    return {"where": p.where, "noise_multiplier": m.noise_multiplier, "clip": p.clip,
            "adaptive": p.target_quantile is not None, "delta": p.delta,
            "epsilon": m.epsilon(rounds), "accountant": p.accountant, "rounds": rounds,
            "sampling": m.round.description}
