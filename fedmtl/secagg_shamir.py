"""Shamir's t-of-n secret sharing over GF(65521) for `fedmtl.secagg`: sharing on the host
(NumPy), reconstruction in JAX (vectorized, jit-able), 64-bit seeds carried as six 11-bit
field elements so that every product of two elements fits uint32.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

P = 65521  # the largest prime below 2^16: a product of two elements is < 2^32
CHUNK_BITS = 11
CHUNKS = 6  # field elements per 64-bit seed: three 11-bit chunks of each uint32 word
_WORD_CHUNKS = (0, 11, 22)  # bit offsets of a word's chunks (the last holds 10 bits)


def split(words: np.ndarray) -> np.ndarray:
    """Seeds [..., 2] uint32 as field elements [..., 6] (each < 2^11 < P), host side."""
    words = np.asarray(words, np.uint32)
    parts = [(words[..., w] >> np.uint32(o)) & np.uint32(2**CHUNK_BITS - 1)
             for w in (0, 1) for o in _WORD_CHUNKS]
    return np.stack(parts, axis=-1)


def join(chunks):
    """The inverse of `split`, in JAX: [..., 6] field elements -> [..., 2] uint32 words."""
    chunks = chunks.astype(jnp.uint32)
    words = [chunks[..., 3 * w] | (chunks[..., 3 * w + 1] << 11) | (chunks[..., 3 * w + 2] << 22)
             for w in (0, 1)]
    return jnp.stack(words, axis=-1)


def _inverse(v: np.ndarray) -> np.ndarray:
    """v^(P-2) mod P elementwise (Fermat): the inverse of each nonzero v [...] uint64."""
    out, base, e = np.ones_like(v), v % P, P - 2
    while e:
        if e & 1:
            out = out * base % P
        base, e = base * base % P, e >> 1
    return out


def share(secrets: np.ndarray, holders: int, threshold: int,
          rng: np.random.Generator) -> np.ndarray:
    """Shares [..., n, m] uint32 of secrets [..., m] (field elements): share j is
    f(j + 1) for a random polynomial f of degree t - 1 with f(0) = the secret, so any t of
    the n = `holders` shares determine it and t - 1 of them say nothing about it.
    """
    if not 1 <= threshold <= holders < P:
        raise ValueError(f"shamir: need 1 <= threshold <= holders < {P}, got threshold "
                         f"{threshold}, holders {holders}")
    secrets = np.asarray(secrets, np.uint64)
    coeffs = rng.integers(0, P, (threshold - 1, *secrets.shape), dtype=np.uint64)
    x = np.arange(1, holders + 1, dtype=np.uint64).reshape(holders, *([1] * secrets.ndim))
    acc = np.zeros((holders, *secrets.shape), np.uint64)
    for c in coeffs[::-1]:  # Horner: ((c_{t-1} x + c_{t-2}) x + ...) x + secret
        acc = (acc + c) * x % P
    acc = (acc + secrets) % P  # [n, ..., m]
    return np.moveaxis(acc, 0, -2).astype(np.uint32)


def _lagrange_factors(holders: int) -> np.ndarray:
    """F [n, n] uint32: F[j, i] = x_i / (x_i - x_j) mod P for i != j, 1 on the diagonal, with
    x_i = i + 1; the Lagrange weight of share j at 0 is the product of F[j, i] over the other
    available holders i."""
    i, j = np.meshgrid(np.arange(holders), np.arange(holders))
    diff = (i - j) % P
    inv = _inverse(np.where(diff == 0, 1, diff).astype(np.uint64))
    f = (i + 1).astype(np.uint64) * inv % P
    return np.where(i == j, 1, f).astype(np.uint32)


def _mulmod(a, b):
    return a * b % P  # operands < P < 2^16: the uint32 product does not wrap


def reconstruct(shares, available):
    """The secrets [..., m] uint32 from shares [..., n, m] of which only those with
    available [..., n] True are used (the others may hold anything): Lagrange interpolation at
    0 through the available points. Correct whenever at least t shares are available; with
    fewer it returns some other field element (nothing about the secret is learnt).
    """
    n = shares.shape[-2]
    factors = jnp.where(available[..., None, :], jnp.asarray(_lagrange_factors(n)),
                        jnp.uint32(1))  # [..., n(j), n(i)]
    while factors.shape[-1] > 1:  # the product over i, mod P, in log2(n) halvings
        if factors.shape[-1] % 2:
            factors = jnp.concatenate([factors, jnp.ones_like(factors[..., :1])], axis=-1)
        factors = _mulmod(factors[..., 0::2], factors[..., 1::2])
    weights = jnp.where(available, factors[..., 0], jnp.uint32(0))  # [..., n]
    terms = _mulmod(weights[..., None], shares.astype(jnp.uint32))  # [..., n, m]
    return jnp.sum(terms, axis=-2, dtype=jnp.uint32) % P  # n (P - 1) < 2^32 for n < P
