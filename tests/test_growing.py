import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nca_adv.models import growing, masks, update
from nca_adv.training import engine, trainers

KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def params():
    # Random (non-zero) last layer so that the CA actually changes the state.
    p = growing.init_growing_params(jax.random.PRNGKey(0))
    k = jax.random.PRNGKey(1)
    p["dense2"]["kernel"] = 0.05 * jax.random.normal(k, p["dense2"]["kernel"].shape)
    return p


def test_parameter_count_and_zero_init():
    p = growing.init_growing_params(jax.random.PRNGKey(0))
    assert update.count_params(p) == 8336
    assert not np.any(np.asarray(p["dense2"]["kernel"]))
    assert p["dense1"]["kernel"].shape == (48, 128)


def test_seed_state():
    x = np.asarray(growing.seed_state(9, 8))
    assert x.shape == (9, 8, 16)
    np.testing.assert_array_equal(x[4, 4, :3], 0)
    np.testing.assert_array_equal(x[4, 4, 3:], 1)
    assert x.sum() == 13


def test_same_key_bit_identical_states(params):
    x0 = growing.seed_state(16, 16)
    a = growing.rollout(params, x0, jax.random.PRNGKey(5), 20)
    b = growing.rollout(params, x0, jax.random.PRNGKey(5), 20)
    c = growing.rollout(params, x0, jax.random.PRNGKey(6), 20)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_rollout_prefix_and_trajectory(params):
    x0 = growing.seed_state(16, 16)
    key = jax.random.PRNGKey(2)
    traj = growing.rollout(params, x0, key, 12, trajectory=True)
    assert traj.shape == (12, 16, 16, 16)
    np.testing.assert_array_equal(traj[7], growing.rollout(params, x0, key, 8))


def test_step_rule_by_hand(params):
    # fire_rate=1: x_new = (x + dx) * (alive(x) & alive(x + dx)), with no rescaling.
    x = growing.rollout(params, growing.seed_state(12, 12), jax.random.PRNGKey(0), 10)
    key = jax.random.PRNGKey(9)
    dx = growing.UPDATE.apply({"params": params}, growing.sobel_perceive(x))
    expected = (x + dx) * (masks.alive_mask(x) & masks.alive_mask(x + dx))
    np.testing.assert_allclose(growing.growing_step(params, x, key, 1.0), expected, atol=1e-6)
    # fire_rate=0: only the life mask acts, and it keeps an alive state unchanged.
    np.testing.assert_array_equal(
        growing.growing_step(params, x, key, 0.0), x * masks.alive_mask(x)
    )


def test_dead_cells_stay_dead(params):
    x = growing.rollout(params, growing.seed_state(24, 24), jax.random.PRNGKey(0), 5)
    far = ~np.asarray(masks.alive_mask(x))[..., 0]
    assert far.any()
    x1 = np.asarray(growing.growing_step(params, x, jax.random.PRNGKey(1)))
    # Cells dead before the step were multiplied by 0.
    np.testing.assert_array_equal(x1[far], 0.0)


def test_batched_rollout_runs_each_sample(params):
    x0 = jnp.broadcast_to(growing.seed_state(10, 10), (3, 10, 10, 16))
    out = growing.rollout(params, x0, jax.random.PRNGKey(0), 4)
    assert out.shape == (3, 10, 10, 16)
    assert not np.allclose(out[0], out[1])  # each sample draws its own fire masks


def test_rollout_with_damage_layout(params):
    x0 = jnp.broadcast_to(growing.seed_state(24, 24), (2, 24, 24, 16))
    key = jax.random.PRNGKey(3)
    traj = np.asarray(
        growing.rollout_with_damage(params, x0, key, 10, damage_at=6, trajectory=True)
    )
    assert traj.shape == (11, 2, 24, 24, 16)  # 6 steps, the cut state, 4 steps
    k_first, k_damage, _ = jax.random.split(key, 3)
    np.testing.assert_array_equal(traj[5], growing.rollout(params, x0, k_first, 6))
    np.testing.assert_array_equal(traj[6], growing.damage(traj[5], k_damage))
    final = growing.rollout_with_damage(params, x0, key, 10, damage_at=6)
    np.testing.assert_allclose(final, traj[-1], atol=1e-6)
    with pytest.raises(ValueError, match="damage_at"):
        growing.rollout_with_damage(params, x0, key, 10, damage_at=10)


def test_vmapped_rollout_per_sample_keys(params):
    keys = jax.random.split(jax.random.PRNGKey(8), 3)
    x0 = jnp.broadcast_to(growing.seed_state(10, 10), (3, 10, 10, 16))
    out = growing.rollout_each(params, x0, keys, 6)
    np.testing.assert_allclose(out[2], growing.rollout(params, x0[2], keys[2], 6), atol=1e-6)
    assert not np.allclose(out[0], out[1])


def test_variable_rollout_equals_fixed(params):
    x0 = jnp.broadcast_to(growing.seed_state(12, 12), (2, 12, 12, 16))
    key = jax.random.PRNGKey(4)
    fixed = growing.rollout(params, x0, key, 7)
    var = jax.jit(growing.variable_rollout, static_argnames="max_steps")(
        params, x0, key, jnp.int32(7), max_steps=11
    )
    np.testing.assert_allclose(var, fixed, atol=1e-6)


def test_loss_definition():
    t = np.zeros((4, 4, 4), np.float32)
    x = np.zeros((2, 4, 4, 16), np.float32)
    x[0, ..., :4] = 0.5
    x[1, ..., 4:] = 9.0  # hidden channels do not count
    np.testing.assert_allclose(growing.growing_loss(x, t), [0.25, 0.0])


def test_recipe_batch_sorts_resets_and_damages():
    """The growing recipe's batch discipline (the engine's ``prepare``): sort by loss,
    highest first; slot 0 := the seed; the ``damage_n`` lowest-loss samples get a hole."""
    target = np.zeros((20, 20, 4), np.float32)
    x = np.zeros((4, 20, 20, 16), np.float32)
    for i in range(4):
        x[i, ..., :4] = 0.1 * (i + 1)  # loss grows with i
    x[..., 4:] = 1.0
    seed = growing.seed_state(20, 20)
    recipe = trainers.growing_recipe(growing.GrowingTrainConfig(batch_size=4, damage_n=2))
    batch = recipe.prepare({"x": jnp.asarray(x)}, {"seed": seed}, {"target": target}, KEY)
    out = np.asarray(batch["x"])
    np.testing.assert_array_equal(out[0], seed)
    np.testing.assert_allclose(out[1, 0, 0, 0], 0.3)  # sorted: highest loss first
    assert (out[2:] == 0).any(axis=(1, 2, 3)).all()  # damaged holes
    assert (out[1] != 0).all()


def test_recipe_needs_damage_below_the_batch_size():
    with pytest.raises(ValueError, match="damage_n"):
        trainers.growing_recipe(growing.GrowingTrainConfig(batch_size=2, damage_n=2))


def test_engine_training_lowers_loss_on_tiny_target():
    target = np.zeros((16, 16, 4), np.float32)
    target[6:10, 6:10] = [0.8, 0.1, 0.1, 1.0]
    config = growing.GrowingTrainConfig(
        pool_size=4, batch_size=4, min_steps=8, max_steps=12, damage_n=0
    )
    recipe = trainers.growing_recipe(config)
    runs = engine.stack_runs([{"target": target}])
    shared = {"seed": growing.seed_state(16, 16)}
    _, metrics = engine.train(recipe, KEY[None], shared, runs, 30)
    losses = np.asarray(metrics["loss"][0])
    assert np.mean(losses[-5:]) < 0.7 * losses[0], losses


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((8, 8, 3), np.float32), "shape"),
        (np.zeros((8, 16), np.float32), "shape"),
        (np.full((8, 8, 16), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_states_raise(params, bad, match):
    with pytest.raises(ValueError, match=match):
        growing.rollout(params, bad, jax.random.PRNGKey(0), 2)
