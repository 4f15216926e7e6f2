"""The sample pool: a host-side array of states that training draws batches from and
writes the evolved batches back to (persistence across iterations, as in the original)."""

from __future__ import annotations

import jax
import numpy as np


def sample_indices(key: jax.Array, pool_size: int, batch_size: int) -> np.ndarray:
    """``batch_size`` distinct pool slots drawn with ``key``."""
    if batch_size > pool_size:
        raise ValueError(f"batch {batch_size} is larger than the pool {pool_size}")
    return np.asarray(jax.random.choice(key, pool_size, (batch_size,), replace=False))


def commit(pool: np.ndarray, indices: np.ndarray, batch: jax.Array) -> None:
    """Write ``batch`` back into ``pool`` at ``indices`` (in place)."""
    pool[indices] = np.asarray(batch)
