import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nca_adv.models import mnist, update
from nca_adv.training import engine, trainers


def _digits(n=6, size=10, seed=0):
    """Small random 'digits': a blob of grey values > 0.1 on a black background."""
    rng = np.random.default_rng(seed)
    img = np.zeros((n, size, size), np.float32)
    img[:, 2:-2, 3:-3] = rng.uniform(0.05, 1.0, (n, size - 4, size - 6))
    return img, rng.integers(0, 10, n).astype(np.int32)


@pytest.fixture(scope="module")
def params():
    p = mnist.init_mnist_params(jax.random.PRNGKey(0))
    p["dense2"]["kernel"] = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (80, 19))
    return p


def test_parameter_shapes():
    p = mnist.init_mnist_params(jax.random.PRNGKey(0))
    assert p["perceive_kernel"].shape == (3, 3, 20, 80)
    assert not np.any(np.asarray(p["dense2"]["kernel"]))
    assert update.count_params(p) == 3 * 3 * 20 * 80 + 80 + 80 * 80 + 80 + 80 * 19 + 19


def test_channel0_immutable_and_dead_cells_stay_zero(params):
    img, _ = _digits()
    x = mnist.rollout(params, mnist.seed_states(img), jax.random.PRNGKey(0), 15)
    np.testing.assert_array_equal(x[..., 0], img)
    dead = img <= mnist.ALIVE_THRESHOLD
    np.testing.assert_array_equal(np.asarray(x)[dead][:, 1:], 0.0)  # grey stays as input
    assert np.abs(np.asarray(x)[~dead][:, 1:]).max() > 0  # alive cells did change


def test_dense_step_rule(params):
    img, _ = _digits()
    x = mnist.seed_states(img)
    key = jax.random.PRNGKey(3)
    y = mnist.mnist_step(params, x, key, fire_rate=1.0, noise_std=0.0)
    dx = mnist.UPDATE.apply({"params": params}, mnist.im2col3x3(x))
    alive = (img > 0.1)[..., None]
    np.testing.assert_allclose(y[..., 1:], x[..., 1:] + dx * alive, atol=1e-6)
    np.testing.assert_array_equal(y[..., 0], x[..., 0])


@pytest.mark.parametrize("per_sample_keys", [False, True])
def test_alive_cell_step_equals_dense_step(params, per_sample_keys):
    # Same random draws (noise and fire mask included), so the same states.
    img, _ = _digits()
    x = mnist.seed_states(img)
    index = mnist.cell_index(jnp.asarray(img), mnist.cells_needed(img))
    dense, cells = x, x
    for i in range(5):
        key = jax.random.PRNGKey(i)
        if per_sample_keys:
            key = jax.random.split(key, len(img))
        dense = mnist.mnist_step(params, dense, key, per_sample_keys=per_sample_keys)
        cells = mnist.mnist_step_cells(params, cells, index, key, per_sample_keys=per_sample_keys)
    np.testing.assert_allclose(cells, dense, atol=1e-5)
    assert np.abs(np.asarray(dense[..., 1:])).max() > 0


def test_same_key_bit_identical(params):
    img, _ = _digits()
    x0 = mnist.seed_states(img)
    a = mnist.rollout(params, x0, jax.random.PRNGKey(7), 6)
    b = mnist.rollout(params, x0, jax.random.PRNGKey(7), 6)
    c = mnist.rollout(params, x0, jax.random.PRNGKey(8), 6)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_noise_and_fire_rate_statistics(params):
    img, _ = _digits(n=16, size=16)
    x = mnist.seed_states(img)
    index = mnist.cell_index(jnp.asarray(img), mnist.cells_needed(img))
    zero = jax.tree.map(jnp.zeros_like, params)  # dx = 0: what changes is the noise
    y = np.asarray(mnist.mnist_step_cells(zero, x, index, jax.random.PRNGKey(0)))
    alive = img > 0.1
    changed = (y[..., 1:] != 0).any(-1)[alive]
    assert abs(changed.mean() - 0.5) < 0.05  # fire rate 0.5
    noise = y[..., 1:][alive][changed]
    assert abs(noise.std() - 0.02) < 0.002


def test_labels_and_loss():
    img = np.zeros((1, 4, 4), np.float32)
    img[0, 1, 1], img[0, 2, 2] = 0.1, 0.05
    y = np.asarray(mnist.label_maps(img, np.array([3])))
    assert y[0, 1, 1, 3] == 1 and y[0, 1, 1].sum() == 1  # grey >= 0.1 is labelled
    assert y[0, 2, 2].sum() == 0
    x = np.zeros((1, 4, 4, 20), np.float32)
    np.testing.assert_allclose(mnist.l2_loss(x, y), [0.5])


def test_refresh_batch_replaces_and_mutates():
    img, lab = _digits(n=8)
    fresh, fresh_lab = _digits(n=4, seed=1)
    fresh[2:, :, :5] = 0.0  # new digits with a dead left half
    x = np.asarray(mnist.seed_states(img)).copy()
    x[..., 1:] = 0.7  # running state everywhere (also where the old digit was dead)
    x[img <= 0.1] = 0
    out, out_lab = mnist.refresh_batch(jnp.asarray(x), jnp.asarray(lab), fresh, fresh_lab, new_n=2)
    out = np.asarray(out)
    # First 2: fresh seeds.
    np.testing.assert_array_equal(out[:2, ..., 0], fresh[:2])
    np.testing.assert_array_equal(out[:2, ..., 1:], 0)
    # Last 2: grey swapped, state kept only where the new digit is alive.
    np.testing.assert_array_equal(out[-2:, ..., 0], fresh[2:])
    alive_new = fresh[2:] > 0.1
    np.testing.assert_array_equal(out[-2:][~alive_new][:, 1:], 0)
    np.testing.assert_array_equal(out[-2:][alive_new][:, 1:], x[-2:][alive_new][:, 1:])
    # Middle untouched; labels follow the digits.
    np.testing.assert_array_equal(out[2:6], x[2:6])
    np.testing.assert_array_equal(np.asarray(out_lab), [*fresh_lab[:2], *lab[2:6], *fresh_lab[2:]])


def test_engine_training_lowers_loss():
    img, lab = _digits(n=8)
    # Every sample a fresh seed each iteration (new_n = batch): the pool carries no state.
    config = mnist.MnistTrainConfig(pool_size=8, batch_size=8, steps=8, new_n=8, mutate_n=0)
    recipe = trainers.mnist_recipe(config, mnist.cells_needed(img))
    shared = trainers.mnist_shared(np.round(img * 255).astype(np.uint8), lab)
    _, metrics = engine.train(recipe, jax.random.PRNGKey(0)[None], shared, {}, 25)
    losses = np.asarray(metrics["loss"][0])
    assert np.mean(losses[-5:]) < 0.85 * losses[0], losses


def test_evaluator_swap_timing_and_batch_independence(params):
    img, lab = _digits(n=7)
    new_img = np.roll(img, 1, axis=0)
    new_img[:, :, :4] = 0.0  # the new digits have fewer alive cells
    new_lab = (lab + 1) % 10
    run = dict(
        key=jax.random.PRNGKey(0), steps=10, switch_at=5, new_images=new_img, new_labels=new_lab
    )
    stats = mnist.Evaluator(params, batch_size=3).run(img, lab, **run)
    assert stats.alive.shape == (10, 7)
    # Entry t is after t+1 steps: 5 steps on the old digits, then the swap.
    np.testing.assert_array_equal(stats.alive[4], (img > 0.1).sum((1, 2)))
    np.testing.assert_array_equal(stats.alive[5], (new_img > 0.1).sum((1, 2)))
    # Digit i's result depends neither on the batch size nor on its batch mates.
    other = mnist.Evaluator(params, batch_size=7).run(img, lab, **run)
    np.testing.assert_array_equal(stats.correct, other.correct)
    alone = mnist.Evaluator(params).run(img[2:4], lab[2:4], key=run["key"], steps=4)
    direct = mnist.swap_rollout(params, img[2:4], lab[2:4], np.arange(2), run["key"], 4, 96)
    np.testing.assert_array_equal(alone.correct, np.asarray(direct.correct))
    acc, agree = mnist.accuracy_curves(stats)
    assert acc.shape == agree.shape == (10,)
    assert ((0 <= acc) & (acc <= 1)).all() and ((0 <= agree) & (agree <= 1)).all()


def test_swap_partners_is_a_derangement():
    p = mnist.swap_partners(jax.random.PRNGKey(0), 50)
    assert sorted(p) == list(range(50)) and (p != np.arange(50)).all()


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 4)), "shape"),
        (np.full((2, 4, 4), np.nan), "NaN"),
        (np.full((2, 4, 4), 2.0), r"\[0, 1\]"),
    ],
)
def test_bad_images_raise(params, bad, match):
    with pytest.raises(ValueError, match=match):
        mnist.Evaluator(params).run(bad, np.zeros(len(bad), np.int32), jax.random.PRNGKey(0), 2)


def test_bad_swap_inputs_raise(params):
    img, lab = _digits(n=4)
    ev = mnist.Evaluator(params)
    with pytest.raises(ValueError, match="new_images"):
        ev.run(img, lab, jax.random.PRNGKey(0), 4, switch_at=2)
    with pytest.raises(ValueError, match="labels"):
        ev.run(img, np.array([0, 1, 2, 10]), jax.random.PRNGKey(0), 4)


def test_bad_states_raise(params):
    with pytest.raises(ValueError, match="states"):
        mnist.rollout(params, np.zeros((2, 8, 8, 16), np.float32), jax.random.PRNGKey(0), 2)
    with pytest.raises(ValueError, match="NaN"):
        mnist.rollout(params, np.full((2, 8, 8, 20), np.nan, np.float32), jax.random.PRNGKey(0), 2)
