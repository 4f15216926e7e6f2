import jax
import jax.numpy as jnp
import numpy as np

from nca_adv.models import perceive


def test_sobel_kernels_by_hand():
    np.testing.assert_array_equal(perceive.SOBEL_X * 8, [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    np.testing.assert_array_equal(perceive.SOBEL_Y * 8, [[-1, -2, -1], [0, 0, 0], [1, 2, 1]])


def test_sobel_perceive_hand_computed_values():
    # One channel holding a single 1 at (2, 2) of a 5x5 grid: each filter's response at a
    # neighbour is the kernel entry mirrored (cross-correlation), zero elsewhere.
    x = np.zeros((5, 5, 1), np.float32)
    x[2, 2, 0] = 1.0
    y = np.asarray(perceive.sobel_perceive(jnp.asarray(x)))
    assert y.shape == (5, 5, 3)
    np.testing.assert_array_equal(y[..., 0], x[..., 0])  # identity
    # sobel_x at (r, c) = sum k[dy, dx] x[r+dy-1, c+dx-1]; the 1 sits at dy = 3-r, dx = 3-c.
    expected_x = np.zeros((5, 5), np.float32)
    expected_x[1:4, 1:4] = perceive.SOBEL_X[::-1, ::-1]
    np.testing.assert_allclose(y[..., 1], expected_x)
    np.testing.assert_allclose(y[2, 1, 1], 2 / 8)  # left of the 1 sees it on its right
    np.testing.assert_allclose(y[1, 2, 2], 2 / 8)  # above it sees it below
    # A horizontal ramp has gradient 1 per cell in the interior, zero in y.
    ramp = np.tile(np.arange(6, dtype=np.float32), (6, 1))[..., None]
    g = np.asarray(perceive.sobel_perceive(jnp.asarray(ramp)))
    np.testing.assert_allclose(g[1:-1, 1:-1, 1], 1.0)
    np.testing.assert_allclose(g[1:-1, 1:-1, 2], 0.0)


def test_feature_order_is_channel_major():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 6, 4))
    y = perceive.sobel_perceive(x)
    assert y.shape == (2, 7, 6, 12)
    np.testing.assert_allclose(y[..., 2 * 3 + 0], x[..., 2])  # c=2, identity


def test_slices_match_depthwise_conv():
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 9, 8, 16))
    np.testing.assert_allclose(
        perceive.sobel_perceive(x), perceive.sobel_perceive_conv(x), atol=1e-6
    )


def test_im2col_conv_matches_lax_conv():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(2), 3)
    x = jax.random.normal(k1, (2, 6, 5, 20))
    kernel = jax.random.normal(k2, (3, 3, 20, 80))
    bias = jax.random.normal(k3, (80,))
    np.testing.assert_allclose(
        perceive.conv3x3(x, kernel, bias), perceive.conv3x3_lax(x, kernel, bias), atol=1e-4
    )
