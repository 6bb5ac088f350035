"""Privacy accounting with Google's `dp-accounting`: the DP event of one round, ε after every
round, and the noise multiplier z that meets a target (ε, δ).

What one round is, for the accountant (neighbouring federations differ by one node's data;
S is the clip norm, the noise standard deviation is z·S in units of one node's contribution):

    central DP, Poisson sampling with rate q   PoissonSampled(q, Gaussian(z)), add/remove one node
    central DP, a uniform cohort of C of N     SampledWithoutReplacement(N, C, Gaussian(z/2)),
                                               replace one node (a replaced node moves the sum
                                               by up to 2S, hence z/2)
    central DP, every node every round, or a   Gaussian(z), add/remove one node: no amplification
    cohort not uniformly sampled (weighted     by sampling is claimed
    sampling, limited availability)
    local DP                                   Gaussian(z/2) every round, replace one node's
                                               data: the server sees who took part, so there is
                                               no amplification, and a node is counted as taking
                                               part in every round

Dropouts, stragglers and deadlines only remove contributions and are not credited.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import dp_accounting as dpa
import numpy as np
from dp_accounting import pld, rdp
from dp_accounting.rdp import rdp_privacy_accountant

ACCOUNTANTS = ("rdp", "pld")
# RDP orders. dp-accounting's default list starts at 1.1, where its series for fractional
# orders of the subsampled Gaussian fails to converge at common (q, z) and logs warnings;
# orders below 1.75 never give the smallest ε at δ <= 1e-3 for the z we calibrate to.
ORDERS = tuple(np.concatenate([np.arange(1.75, 11.0, 0.25), np.arange(11, 65),
                               [80, 96, 128, 160, 192, 256, 384, 512, 1024]]).tolist())
MAX_NOISE = 1e3  # calibration looks for z in (0, MAX_NOISE]


class AccountingError(ValueError):
    """An accounting request that cannot be met: a target ε no noise level reaches, or an
    accountant that does not cover the federation's sampling."""


class Round(NamedTuple):
    """What the accountant needs about one round.

    Attributes:
      kind: "poisson", "without_replacement", "every_round" (no amplification) or "local".
      nodes: N, nodes that could be sampled.
      cohort: C, nodes sampled (without replacement); rate: q (Poisson).
      description: one line for reports (e.g. "Poisson sampling, q = 0.1").
    """

    kind: str
    nodes: int
    cohort: int = 0
    rate: float = 1.0
    description: str = ""


def event(round_: Round, noise_multiplier: float) -> dpa.DpEvent:
    """The DP event of one round at noise multiplier z (see the module docstring)."""
    z = noise_multiplier
    if round_.kind == "poisson":
        return dpa.PoissonSampledDpEvent(round_.rate, dpa.GaussianDpEvent(z))
    if round_.kind == "without_replacement":
        return dpa.SampledWithoutReplacementDpEvent(round_.nodes, round_.cohort,
                                                    dpa.GaussianDpEvent(z / 2))
    if round_.kind == "local":
        return dpa.GaussianDpEvent(z / 2)
    return dpa.GaussianDpEvent(z)


def relation(round_: Round):
    """The neighbouring relation the round's event is accounted under."""
    replace = round_.kind in ("without_replacement", "local")
    return (dpa.NeighboringRelation.REPLACE_ONE if replace
            else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE)


def accountant(name: str, round_: Round) -> dpa.PrivacyAccountant:
    """A fresh dp-accounting accountant ("rdp" or "pld") for the round's relation.

    Raises:
      AccountingError: PLD with a fixed-size cohort (dp-accounting's PLD accountant does not
        cover sampling without replacement).
    """
    if name == "rdp":
        return rdp.RdpAccountant(ORDERS, relation(round_))
    if name == "pld":
        if round_.kind == "without_replacement":
            raise AccountingError(
                "the pld accountant does not cover a fixed-size cohort sampled without "
                "replacement; use the rdp accountant, or Poisson sampling")
        return pld.PLDAccountant(relation(round_))
    raise AccountingError(f"accountant must be one of {ACCOUNTANTS}, got {name!r}")


def epsilon(name: str, round_: Round, noise_multiplier: float, rounds: int,
            delta: float) -> float:
    """ε at δ after `rounds` rounds (inf without noise; 0 after no rounds)."""
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    acc = accountant(name, round_)
    acc.compose(event(round_, noise_multiplier), rounds)
    return float(acc.get_epsilon(delta))


def epsilons(round_: Round, noise_multiplier: float, rounds: int, delta: float) -> np.ndarray:
    """ε at δ after each of rounds 1..R by RDP [R]: one round's RDP composed r times, which is
    exactly what an RDP accountant composing the event r times holds."""
    if noise_multiplier == 0:
        return np.full(rounds, np.inf)
    acc = accountant("rdp", round_)
    acc.compose(event(round_, noise_multiplier), 1)
    per_round = np.asarray(acc._rdp)  # the one round's RDP at each order
    return np.array([rdp_privacy_accountant.compute_epsilon(ORDERS, r * per_round, delta)[0]
                     for r in range(1, rounds + 1)], dtype=np.float64)


def calibrate(name: str, round_: Round, rounds: int, target_epsilon: float,
              delta: float) -> float:
    """The smallest noise multiplier z (to 1e-4) whose ε after `rounds` rounds is at most
    `target_epsilon` at δ.

    Raises:
      AccountingError: no z <= 1000 reaches the target (say which ε z = 1000 gives).
    """
    make = lambda z: dpa.SelfComposedDpEvent(event(round_, z), rounds)
    worst = epsilon(name, round_, MAX_NOISE, rounds, delta)
    if worst > target_epsilon:
        raise AccountingError(
            f"target ε = {target_epsilon:g} at δ = {delta:g} over {rounds} rounds is out of "
            f"reach: even noise multiplier {MAX_NOISE:g} gives ε = {worst:.3g} "
            f"({round_.description}); allow a larger ε, a larger δ or fewer rounds")
    low, high = 1e-3, MAX_NOISE
    if name == "pld":  # RDP's z meets the target too (RDP bounds ε from above); a PLD at very
        # small noise is too wide to build, so PLD searches below RDP's z only
        high = calibrate("rdp", round_, rounds, target_epsilon, delta)
        low = high / 2
    if epsilon(name, round_, low, rounds, delta) <= target_epsilon:
        return float(low)
    z = dpa.calibrate_dp_mechanism(
        lambda: accountant(name, round_), make, target_epsilon, delta,
        dpa.ExplicitBracketInterval(low, high), tol=1e-4)
    return float(z)
