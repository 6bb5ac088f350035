"""Secure aggregation, simulated faithfully and vectorized over a cohort of C slots: the server
learns only the sum of the reporters' clipped, quantized uploads. SecAgg (Bonawitz et al.,
"Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017) masks over the
complete graph; SecAgg+ (Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS 2020) over a k-regular graph of the slots.

The protocol as simulated:

1. `setup` (host, once): every slot gets an X25519 key pair; each edge {a, b} of the mask graph
   runs one key agreement, hashed by HKDF-SHA256 to a 64-bit pair seed s_ab = s_ba; each slot
   draws a 64-bit self-mask seed b_a; each slot Shamir-shares its k pair seeds and its self seed
   among its k neighbours, threshold t (`secagg_shamir`).
2. `mask` (node side, per slot a): quantize the clipped upload to integers in [0, L) by
   unbiased stochastic rounding, then add PRG(b_a) + Σ_{b>a} PRG(s_ab) − Σ_{b<a} PRG(s_ab)
   mod 2^bits, where PRG = `jax.random.bits` keyed by the seed and the round key.
3. `unmask` (server side): it sees only the reporters' masked rows; the reporters' neighbours
   reveal shares of the self seeds of reporters and of the pair seeds of dropped slots (never
   both for one slot); the server sums the masked rows, removes the reporters' self masks and
   the masks between reporters and dropped slots, and aborts (ok = False, zero sum) when a
   needed secret has fewer than t surviving holders.

What is simulated rather than run: the key agreement runs once per edge at setup, and each
round's masks come from the pair seed and the round key, instead of fresh keys every round (so,
unlike the protocol, a slot whose pair seeds were revealed in one round is exposed if it reports
later on the same setup: a deployment rekeys each round); the private keys are drawn from the
simulation seed, not from the OS's random source; nothing is authenticated or signed and the
shares are not encrypted in transit (the server is honest-but-curious: it follows the protocol
and answers honestly who dropped); Shamir shares are of the pair seeds rather than of the X25519
private key, which tells the server the same about a dropped slot's pairs; the slots that report
(`reported`) are also the ones that answer the unmasking round (no second dropout); a node's
stochastic rounding draws from the round key.

Cost: `mask` expands k + 1 seeds of d words per slot, as each node does in the protocol;
`unmask` ⌈k/2⌉ + 1 [C, d] expansions (each edge once); memory O(C d) throughout.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jax.extend.random import threefry_2x32

from fedmtl import secagg_shamir as shamir
from fedmtl.robust import Aggregator, clip_rows, flat_uploads

_MAX_SHARES = 2**25  # field elements of all slots' shares (C k (k + 1) 6): ~128 MiB
_PAIR, _SELF = 0, 1  # rows of the round words: pair masks, self masks


class SecAggError(ValueError):
    """A secure-aggregation configuration that cannot work: the message names the parameter
    and what was expected."""


class SecureAggregation(NamedTuple):
    """The user's configuration.

    Attributes:
      neighbours: k, the degree of the mask graph over the cohort's slots (SecAgg+: a
        circulant graph, slot a with a ± 1, ..., a ± k/2 mod C, plus a + C/2 when k is odd);
        None: the complete graph (SecAgg 2017, k = C − 1). SecAgg+'s k = 2⌈log2 C⌉ or so must be
        given explicitly; the complete graph keeps C k² shares, so it suits small cohorts.
      bits: the modulus 2^bits, 8 <= bits <= 32 (uint32 arithmetic).
      clip: S; each coordinate of a node's vector is taken in [−S, S] (`aggregator` clips a
        node's flat upload to L2 norm S first).
      levels: L, quantization levels per coordinate over [−S, S]; None: the largest odd L with
        C·L < 2^bits, so that the cohort's sum fits the modulus.
      threshold: Shamir threshold t as a share of a slot's neighbours: t = ⌈threshold · k⌉,
        at least 2 (no single neighbour holds a secret) unless k = 1. A larger t resists
        collusion of the server with more neighbours; a smaller t survives more dropouts (at
        C = 1000, k = 20 and 30% dropouts, t = 10 aborts nearly every round, t = 6 about 4%).
    """

    neighbours: int | None = None
    bits: int = 32
    clip: float = 1.0
    levels: int | None = None
    threshold: float = 0.5


@dataclasses.dataclass(frozen=True)
class SecAggSetup:
    """The outcome of `setup`: public facts (static) and every slot's secrets (arrays).

    Attributes:
      config: the configuration.
      cohort: C, the number of slots.
      offsets: the mask graph: slot a's j-th neighbour is (a + offsets[j]) mod C  [k].
      threshold: t, shares needed to rebuild a secret.
      levels: L, quantization levels.
      public_keys: [C, 32] uint8, each slot's X25519 public key (raw).
      pair_seeds: [C, k, 2] uint32, slot a's seed with its j-th neighbour (node secret).
      self_seeds: [C, 2] uint32 (node secret).
      shares: [C, k, 6(k + 1)] uint32; shares[a, j] is what slot a's j-th neighbour holds of a's
        k pair seeds and self seed (`secagg_shamir.split` chunks, self seed last).
    """

    config: SecureAggregation
    cohort: int
    offsets: tuple[int, ...]
    threshold: int
    levels: int
    public_keys: Any
    pair_seeds: Any
    self_seeds: Any
    shares: Any


jax.tree_util.register_dataclass(
    SecAggSetup, data_fields=["public_keys", "pair_seeds", "self_seeds", "shares"],
    meta_fields=["config", "cohort", "offsets", "threshold", "levels"])


def _whole(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _graph_degree(config: SecureAggregation, cohort: int) -> int:
    if not _whole(cohort) or cohort < 2:
        raise SecAggError(f"secure aggregation: cohort must be a whole number >= 2 slots, got "
                          f"{cohort!r}")
    k = config.neighbours
    if k is None:
        return cohort - 1
    if not _whole(k) or k < 1:
        raise SecAggError(f"secure aggregation: neighbours must be a whole number >= 1 (or "
                          f"None for the complete graph), got {k!r}")
    if k > cohort - 1:
        raise SecAggError(f"secure aggregation: neighbours = {k} exceeds the cohort's "
                          f"{cohort} slots - 1 = {cohort - 1}")
    if k % 2 and cohort % 2:
        raise SecAggError(f"secure aggregation: no {k}-regular graph on an odd cohort of "
                          f"{cohort} slots exists (C·k must be even): make neighbours even")
    return k


def _check(config: SecureAggregation, cohort: int) -> tuple[int, int, int]:
    """(k, t, L) for the configuration and cohort, or SecAggError."""
    k = _graph_degree(config, cohort)
    bits, clip, levels, threshold = config.bits, config.clip, config.levels, config.threshold
    if not _whole(bits) or not 8 <= bits <= 32:
        raise SecAggError(f"secure aggregation: bits must be a whole number in [8, 32] (uint32 "
                          f"arithmetic), got {bits!r}")
    if not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
        raise SecAggError(f"secure aggregation: clip must be finite and > 0, got {clip!r}")
    if not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
        raise SecAggError(f"secure aggregation: threshold must be in (0, 1] (a share of a "
                          f"slot's neighbours), got {threshold!r}")
    if levels is not None and (not _whole(levels) or levels < 2):
        raise SecAggError(f"secure aggregation: levels must be a whole number >= 2, got "
                          f"{levels!r}")
    need = levels or 3  # the default L is odd, >= 3
    if cohort * need >= 2**bits:
        raise SecAggError(
            f"secure aggregation: modulus too small for the clipped, quantized sum of {cohort} "
            f"nodes at {need} levels: need bits >= {math.ceil(math.log2(cohort * need + 1))}, "
            f"got bits = {bits}")
    if levels is None:
        levels = (2**bits - 1) // cohort
        levels -= 1 - levels % 2  # odd: the centre of [-S, S] is a whole level
    if cohort * k * (k + 1) * shamir.CHUNKS > _MAX_SHARES:
        raise SecAggError(f"secure aggregation: {cohort} slots with {k} neighbours each need "
                          f"{cohort * k * (k + 1) * shamir.CHUNKS} shares (> {_MAX_SHARES}); "
                          f"set neighbours (SecAgg+, e.g. 2⌈log2 C⌉)")
    t = min(k, max(2, math.ceil(threshold * k - 1e-9)))
    return k, t, int(levels)


def _offsets(cohort: int, k: int) -> np.ndarray:
    half = np.arange(1, k // 2 + 1)
    both = np.stack([half, cohort - half], axis=1).reshape(-1)  # +1, -1, +2, -2, ...
    return np.concatenate([both, [cohort // 2]]) if k % 2 else both


def _private_keys(cohort: int, seed: int) -> list[X25519PrivateKey]:
    """Each slot's X25519 private key, from the simulation seed (the rng's first draws)."""
    raw = np.random.default_rng(seed).bytes(32 * cohort)
    return [X25519PrivateKey.from_private_bytes(raw[32 * a:32 * a + 32]) for a in range(cohort)]


def pair_seed(private: X25519PrivateKey, public) -> np.ndarray:
    """The 64-bit pair seed [2] uint32 of an X25519 key agreement, hashed by HKDF-SHA256."""
    shared = private.exchange(public)
    kdf = HKDF(algorithm=hashes.SHA256(), length=8, salt=None, info=b"fedmtl secagg pair seed")
    return np.frombuffer(kdf.derive(shared), "<u4").copy()


def setup(config: SecureAggregation, cohort: int, seed: int) -> SecAggSetup:
    """Keys, pair seeds and Shamir shares for a cohort of C slots (host side, once).

    Raises:
      SecAggError: for a cohort < 2, neighbours outside [1, C − 1] (or odd with C odd: no such
        graph), bits outside [8, 32], clip <= 0, levels < 2 or C·levels >= 2^bits, threshold
        outside (0, 1], or more shares than fit memory (the complete graph of a large cohort).

    Example:
      >>> s = setup(SecureAggregation(neighbours=4), cohort=10, seed=0)
      >>> s.pair_seeds.shape, s.threshold
      ((10, 4, 2), 2)
    """
    k, t, levels = _check(config, cohort)
    offsets = _offsets(cohort, k)
    reverse = np.argsort(offsets)[np.searchsorted(np.sort(offsets), (cohort - offsets) % cohort)]
    privates = _private_keys(cohort, seed)
    publics = [p.public_key() for p in privates]
    a = np.repeat(np.arange(cohort), k)
    j = np.tile(np.arange(k), cohort)
    b = (a + offsets[j]) % cohort
    a, j, b = a[a < b], j[a < b], b[a < b]  # each edge once: one key agreement per edge
    edge_seeds = np.stack([pair_seed(privates[x], publics[y]) for x, y in zip(a, b, strict=True)])
    pairs = np.zeros((cohort, k, 2), np.uint32)
    pairs[a, j] = edge_seeds
    pairs[b, reverse[j]] = edge_seeds
    rng = np.random.default_rng([seed, 1])
    selfs = rng.integers(0, 2**32, (cohort, 2), dtype=np.uint32)
    secrets = shamir.split(np.concatenate([pairs, selfs[:, None]], axis=1))  # [C, k+1, 6]
    shares = shamir.share(secrets.reshape(cohort, -1), k, t, rng)  # [C, k, 6(k+1)]
    raw = np.stack([np.frombuffer(p.public_bytes(Encoding.Raw, PublicFormat.Raw), np.uint8)
                    for p in publics])
    return SecAggSetup(config, cohort, tuple(int(o) for o in offsets), t, levels,
                       jnp.asarray(raw), jnp.asarray(pairs), jnp.asarray(selfs),
                       jnp.asarray(shares))


def _shape(setup: SecAggSetup, x, what: str) -> int:
    if x.ndim != 2 or x.shape[0] != setup.cohort:
        raise SecAggError(f"secure aggregation: {what} must be [C, d] with C = {setup.cohort} "
                          f"slots (the setup's cohort), got shape {tuple(x.shape)}")
    return x.shape[1]


def _modulus_mask(setup: SecAggSetup) -> jax.Array:
    return jnp.uint32(2**setup.config.bits - 1)


def _round_words(key):
    """[2, 2] uint32: the round's public PRG inputs, one pair for pair masks, one for self."""
    return jax.random.bits(key, (2, 2), jnp.uint32)


def _prg(seeds, words, d: int):
    """[C, d] uint32: row a is PRG(seed a) for this round, the expansion of the key
    Threefry_seed(words) (a PRF of the round, so every round masks afresh)."""

    def row(seed):
        derived = threefry_2x32((seed[0], seed[1]), words)
        return jax.random.bits(jax.random.wrap_key_data(derived, impl="threefry2x32"), (d,),
                               jnp.uint32)

    return jax.vmap(row)(seeds)


def quantize(setup: SecAggSetup, vectors, key):
    """Each coordinate of vectors [C, d] (clamped to [−S, S]) as an integer in [0, L) by
    unbiased stochastic rounding of (x + S)(L − 1) / 2S: [C, d] uint32."""
    _shape(setup, vectors, "vectors")
    clip, levels = setup.config.clip, setup.levels
    half = (levels - 1) / 2  # the centre, a whole level when L is odd
    x = jnp.clip(vectors.astype(jnp.float32), -clip, clip) * ((levels - 1) / (2 * clip))
    x = x + (half - math.floor(half))  # integer offset added below, in exact integers
    low = jnp.floor(x)
    u = jax.random.uniform(jax.random.fold_in(key, 1), x.shape, jnp.float32)
    q = low.astype(jnp.int32) + (u < x - low).astype(jnp.int32) + math.floor(half)
    return jnp.clip(q, 0, levels - 1).astype(jnp.uint32)


def mask(setup: SecAggSetup, vectors, key):
    """The uploads each slot sends (node side): its quantized vector plus its self mask and
    its pairwise masks, mod 2^bits.

    Args:
      setup: from `setup`.
      vectors: [C, d] float, coordinates in [−S, S].
      key: the round's key (both sides derive the round's masks from it).

    Returns:
      [C, d] uint32 in [0, 2^bits).
    """
    d = _shape(setup, vectors, "vectors")
    slots = jnp.arange(setup.cohort)
    # the self mask as the mask with oneself (offset 0, added): one PRG in the loop
    offsets = jnp.asarray((0, *setup.offsets), jnp.int32)
    seeds = jnp.concatenate([setup.self_seeds[:, None], setup.pair_seeds], axis=1)
    words = _round_words(key)

    def add(j, acc):  # one [C, d] draw per neighbour offset: memory stays O(C d)
        other = (slots + offsets[j]) % setup.cohort
        m = _prg(seeds[:, j], words[jnp.where(j == 0, _SELF, _PAIR)], d)
        return jnp.where((slots <= other)[:, None], acc + m, acc - m)

    out = jax.lax.fori_loop(0, offsets.shape[0], add, quantize(setup, vectors, key))
    return out & _modulus_mask(setup)


def _reveal(setup: SecAggSetup, reported):
    """The unmasking round, node side: each reporting slot sends the shares it holds of its
    reporting neighbours' self seeds and of its dropped neighbours' pair seeds (never both for
    one slot). Returns (shares as received [C, k, 6(k + 1)], holder answered [C, k])."""
    k = len(setup.offsets)
    holders = (jnp.arange(setup.cohort)[:, None] + jnp.asarray(setup.offsets)[None, :]) \
        % setup.cohort  # [C, k]
    answered = reported[holders]
    wanted = jnp.concatenate([jnp.repeat(~reported[:, None], k * shamir.CHUNKS, axis=1),
                              jnp.repeat(reported[:, None], shamir.CHUNKS, axis=1)], axis=1)
    sent = answered[:, :, None] & wanted[:, None, :]
    return jnp.where(sent, setup.shares, jnp.uint32(0)), answered


def unmask(setup: SecAggSetup, masked, reported, key):
    """The server: the reporters' quantized sum mod 2^bits, from their masked rows only.

    Args:
      setup: only its public part (graph, threshold, levels) and, through `_reveal`, the
        shares the reporters send are used.
      masked: [C, d] uint32 from `mask`; rows of non-reporting slots are ignored.
      reported: [C] bool, the slots whose masked rows arrived.
      key: the round's key.

    Returns:
      (sum [d] uint32, ok): ok is False, and the sum zero, when the protocol aborts: some
      reporter, or some dropped slot with a reporting neighbour, has fewer than t reporting
      neighbours to rebuild the secret the server needs.
    """
    d = _shape(setup, masked, "masked")
    k, slots = len(setup.offsets), jnp.arange(setup.cohort)
    received, answered = _reveal(setup, reported)
    count = jnp.sum(answered, axis=1)
    needed = reported | jnp.any(answered, axis=1)
    ok = jnp.all(~needed | (count >= setup.threshold))
    secrets = shamir.join(
        shamir.reconstruct(received, answered).reshape(setup.cohort, k + 1, shamir.CHUNKS))

    def keep(rows, where):
        return jnp.sum(jnp.where(where[:, None], rows, jnp.uint32(0)), axis=0, dtype=jnp.uint32)

    # Row 0: the reporters' self masks. Then each edge {a, a + o} once (o <= C/2), its seed
    # rebuilt from the dropped end's shares: only edges between a reporter and a dropped slot
    # left a mask in the sum.
    offsets = np.asarray(setup.offsets)
    half = np.flatnonzero(2 * offsets <= setup.cohort)
    reverse = [setup.offsets.index(setup.cohort - o) for o in offsets[half]]
    edges = jnp.asarray(np.stack([[k, *half], [k, *reverse], [0, *offsets[half]]]), jnp.int32)
    words = _round_words(key)

    def remove(i, total):
        j, r, o = edges[:, i]
        other = (slots + o) % setup.cohort
        gone, other_gone = ~reported, ~reported[other]
        cross = (gone != other_gone) & ((2 * o != setup.cohort) | (slots < other))
        live = jnp.where(gone, other, slots)  # the reporter, which added +m if live < dead
        dead = jnp.where(gone, slots, other)
        m = _prg(jnp.where(gone[:, None], secrets[:, j], secrets[other, r]),
                 words[jnp.where(i == 0, _SELF, _PAIR)], d)
        minus = jnp.where(i == 0, reported, cross & (live < dead))
        return total - keep(m, minus) + keep(m, cross & (live > dead))

    total = jax.lax.fori_loop(0, edges.shape[1], remove, keep(masked, reported))
    total = total & _modulus_mask(setup)
    return jnp.where(ok, total, jnp.uint32(0)), ok


def decode(setup: SecAggSetup, total, reporters):
    """A quantized sum [d] uint32 of `reporters` slots back to floats [d]."""
    levels = setup.levels
    half = (levels - 1) / 2
    shift = reporters.astype(jnp.uint32) * jnp.uint32(math.floor(half))
    centred = jax.lax.bitcast_convert_type(total - shift, jnp.int32).astype(jnp.float32)
    fraction = reporters.astype(jnp.float32) * (half - math.floor(half))
    return (centred - fraction) * (2 * setup.config.clip / (levels - 1))


def unmask_sum(setup: SecAggSetup, masked, reported, key):
    """The server's float sum [d] of the reporters' quantized vectors, and ok (see `unmask`)."""
    total, ok = unmask(setup, masked, reported, key)
    out = decode(setup, total, jnp.sum(reported, dtype=jnp.int32))
    return jnp.where(ok, out, jnp.zeros_like(out)), ok


def secure_sum(setup: SecAggSetup, vectors, reported, key):
    """Σ over reporting slots of vectors [C, d] (coordinates in [−S, S]) through `mask` and
    `unmask_sum`: (sum [d] float32, ok). Central DP adds its noise to this sum."""
    return unmask_sum(setup, mask(setup, vectors, key), reported, key)


def aggregator(config: SecureAggregation, cohort: int, seed: int) -> Aggregator:
    """The weighted mean Σ w_k u_k / Σ w_k through secure aggregation ("secure_mean").

    Each node clips its flat upload to L2 norm S, scales it by w_k / w_max and appends
    S · w_k / w_max as one more coordinate, so the server learns only Σ w_k u_k and Σ w_k.
    w_max is the largest weight of the call (a deployment fixes a public bound instead).
    Zeros when nobody reported or the protocol aborted. Uploads must have C = `cohort` rows.

    Example:
      >>> agg = aggregator(SecureAggregation(neighbours=4), cohort=10, seed=0)
      >>> agg.check(8)  # raises SecAggError for 4 or fewer reporters
    """
    state = setup(config, cohort, seed)
    clip = float(config.clip)

    def aggregate(uploads, weights, key):
        vectors, unravel = flat_uploads(uploads)
        if vectors.shape[0] != cohort:
            raise SecAggError(f"secure_mean: uploads have {vectors.shape[0]} rows, the setup "
                              f"has a cohort of {cohort} slots")
        reported = weights > 0
        scale = weights / jnp.maximum(jnp.max(weights), jnp.finfo(weights.dtype).tiny)
        vectors = clip_rows(vectors, clip)
        rows = jnp.concatenate([vectors * scale[:, None], clip * scale[:, None]], axis=1)
        total, ok = secure_sum(state, rows.astype(jnp.float32), reported, key)
        good = ok & jnp.any(reported) & (total[-1] > 0)
        mean = total[:-1] * (clip / jnp.where(good, total[-1], 1.0))
        return unravel(jnp.where(good, mean, jnp.zeros_like(mean)).astype(vectors.dtype))

    def check(reporters: int) -> None:
        if config.neighbours is not None and config.neighbours >= reporters:
            raise SecAggError(f"secure_mean: neighbours = {config.neighbours} must be fewer "
                              f"than the {reporters} nodes expected to report per round")

    return Aggregator("secure_mean", aggregate, check, config._asdict())
