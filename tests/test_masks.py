import jax
import jax.numpy as jnp
import numpy as np

from nca_adv.models import masks


def test_alive_is_maxpool3x3_of_alpha_over_threshold():
    x = np.zeros((6, 6, 16), np.float32)
    x[0, 0, 3] = 0.5  # corner: its 2x2 neighbourhood lives
    x[4, 4, 3] = 0.1  # exactly the threshold: not alive (strict >)
    x[2, 4, 0] = 5.0  # colour without alpha: not alive
    alive = np.asarray(masks.alive_mask(jnp.asarray(x)))[..., 0]
    expected = np.zeros((6, 6), bool)
    expected[:2, :2] = True
    np.testing.assert_array_equal(alive, expected)


def test_alive_batched_and_negative_alpha():
    x = np.full((2, 4, 4, 16), -1.0, np.float32)
    x[1, 1, 1, 3] = 0.2
    alive = np.asarray(masks.alive_mask(jnp.asarray(x)))
    assert alive.shape == (2, 4, 4, 1)
    assert not alive[0].any()
    assert alive[1, :3, :3].all() and alive[1].sum() == 9


def test_fire_mask_rate_and_determinism():
    key = jax.random.PRNGKey(0)
    m = masks.fire_mask(key, (64, 64), 0.5)
    assert m.shape == (64, 64, 1) and m.dtype == bool
    assert abs(float(m.mean()) - 0.5) < 0.03
    np.testing.assert_array_equal(m, masks.fire_mask(key, (64, 64), 0.5))
    assert not np.array_equal(m, masks.fire_mask(jax.random.PRNGKey(1), (64, 64), 0.5))
    assert bool(masks.fire_mask(key, (8, 8), 1.0).all())
    assert not bool(masks.fire_mask(key, (8, 8), 0.0).any())


def test_circle_damage_masks():
    m = np.asarray(masks.circle_damage_masks(jax.random.PRNGKey(3), 5, 72, 72))
    assert m.shape == (5, 72, 72, 1)
    assert set(np.unique(m)) <= {0.0, 1.0}
    holes = (m == 0).sum(axis=(1, 2, 3))
    # radius in [0.1, 0.4] of the half-width 36 cells: area between ~40 and ~650 cells
    assert (holes > 20).all() and (holes < 700).all()
