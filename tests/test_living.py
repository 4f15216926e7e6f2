"""Living-cell steps equal the dense step: forward and gradients, from the seed, after
damage, with adversaries, under a perturbation, vmapped, and past every capacity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nca_adv import io
from nca_adv.attacks import adversaries, perturbation
from nca_adv.models import architecture, growing, living
from nca_adv.models.rollout import scan_steps
from nca_adv.training import engine, trainers

H = W = 24
TOL = 2e-6


@pytest.fixture(scope="module")
def lizard():
    return io.load_model("lizard", "growing")


def _steps(params, model=None):
    model = model or architecture.GrowingCA()
    return model.step(params, "dense"), model.step(params, "living")


def _close(a, b, tol=TOL):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = max(1.0, float(np.max(np.abs(a))))
    assert float(np.max(np.abs(a - b))) <= tol * scale, float(np.max(np.abs(a - b)))


def _grown(params, steps=40, batch=2):
    x0 = jnp.broadcast_to(growing.seed_state(H, W), (batch, H, W, 16))
    dense, _ = _steps(params)
    return jax.jit(lambda x: scan_steps(dense, x, jax.random.PRNGKey(1), steps))(x0)


def test_forward_from_the_seed_and_after_damage(lizard):
    dense, live = _steps(lizard)
    x0 = jnp.broadcast_to(growing.seed_state(H, W), (2, H, W, 16))
    key = jax.random.PRNGKey(0)
    run = lambda step, x: jax.jit(lambda x: scan_steps(step, x, key, 40, trajectory=True))(x)  # noqa: E731
    a, b = run(dense, x0), run(live, x0)
    _close(a, b)
    assert float(jnp.abs(a[-1]).max()) > 0.5  # it grew
    cut = growing.damage(a[-1], jax.random.PRNGKey(3))
    _close(run(dense, cut), run(live, cut))


def test_random_states_and_masks_property(lizard):
    """Random states (alive patches of random size, random values) and random adversary
    masks: the living mixed step equals the dense one, step for step."""
    rng = np.random.default_rng(0)
    adversary = jax.tree.map(lambda a: a + 0.05 * rng.standard_normal(a.shape), lizard)
    base_d, base_l = _steps(lizard)
    adv_d, adv_l = _steps(adversary)
    for trial in range(6):
        x = rng.standard_normal((2, H, W, 16)).astype(np.float32)
        alive = rng.random((2, H, W)) < rng.uniform(0.02, 0.9)
        x[..., 3] = np.where(alive, np.abs(x[..., 3]) + 0.2, 0.0)
        mask = (rng.random((2, H, W, 1)) < rng.uniform(0.0, 0.6)).astype(np.float32)
        key = jax.random.PRNGKey(trial)
        dense = adversaries.with_adversaries(adv_d, mask)(base_d)
        live = adversaries.with_adversaries(adv_l, mask)(base_l)
        _close(jax.jit(dense)(x, key), jax.jit(live)(x, key))
        _close(jax.jit(base_d)(x, key), jax.jit(base_l)(x, key))


def test_overflow_runs_dense_never_drops_a_cell(lizard):
    """Every cell alive: more than the largest capacity; the step is still exact."""
    x = np.zeros((1, H, W, 16), np.float32)
    x[..., 3:] = 1.0
    assert int(living.needed_cells(x).sum()) > max(living.capacities(H * W))
    dense, live = _steps(lizard)
    key = jax.random.PRNGKey(0)
    _close(jax.jit(dense)(x, key), jax.jit(live)(x, key))
    # A perturbation that grows without bound (k = -1 of the tail matrix), 60 steps.
    a = perturbation.interpolate(jnp.asarray(perturbation.load_matrix("tail")), -1.0)
    x0 = _grown(lizard, batch=1)
    roll = lambda s: jax.jit(lambda x: scan_steps(perturbation.perturb(a)(s), x, key, 60))(x0)  # noqa: E731
    _close(roll(dense), roll(live), 1e-5)


def test_gradients_match(lizard):
    x0 = _grown(lizard)
    target = jnp.zeros((H, W, 4))
    key = jax.random.PRNGKey(2)

    def loss(params, form):
        step = architecture.GrowingCA().step(params, form)
        x = scan_steps(step, x0, key, 12, remat=True)
        return jnp.mean(jnp.square(x[..., :4] - target))

    gd = jax.jit(jax.grad(lambda p: loss(p, "dense")))(lizard)
    gl = jax.jit(jax.grad(lambda p: loss(p, "living")))(lizard)
    for a, b in zip(jax.tree.leaves(gd), jax.tree.leaves(gl)):
        _close(a, b, 1e-5)
    # Gradient of the adversary's parameters through the fused mixed step.
    mask = (jax.random.uniform(jax.random.PRNGKey(5), (2, H, W, 1)) < 0.3).astype(jnp.float32)

    def adv_loss(adv, form):
        model = architecture.GrowingCA()
        step = adversaries.with_adversaries(model.step(adv, form), mask)(model.step(lizard, form))
        x = scan_steps(step, x0, key, 8, remat=True)
        return jnp.mean(jnp.square(x[..., :4] - target))

    start = jax.tree.map(lambda a: a * 0.9, lizard)
    gd = jax.jit(jax.grad(lambda p: adv_loss(p, "dense")))(start)
    gl = jax.jit(jax.grad(lambda p: adv_loss(p, "living")))(start)
    for a, b in zip(jax.tree.leaves(gd), jax.tree.leaves(gl)):
        _close(a, b, 1e-5)


def test_vmapped_over_keys_states_and_parameters(lizard):
    dense, live = _steps(lizard)
    x0 = _grown(lizard, batch=3)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    run = lambda s: jax.jit(jax.vmap(lambda x, k: scan_steps(s, x, k, 10)))(x0, keys)  # noqa: E731
    _close(run(dense), run(live))
    # Parameters per run (a vmap over adversaries): runs one after another.
    advs = jax.tree.map(lambda a: jnp.stack([a, 0.9 * a, 1.1 * a]), lizard)
    mask = jnp.ones((H, W, 1)) * (jnp.arange(W)[None, :, None] % 3 == 0)

    def mixed(adv, x, k, form):
        model = architecture.GrowingCA()
        step = adversaries.with_adversaries(model.step(adv, form), mask)(model.step(lizard, form))
        return scan_steps(step, x, k, 6)

    for_form = lambda f: jax.jit(jax.vmap(lambda a, x, k: mixed(a, x, k, f)))(advs, x0, keys)  # noqa: E731
    _close(for_form("dense"), for_form("living"))


def test_gradients_of_vmapped_steps(lizard):
    """``grad`` of ``vmap`` (states and keys batched, and parameters per run) and ``vmap``
    of ``grad``: equal to the dense step's (a batched capacity switch once failed to
    transpose)."""
    x0 = _grown(lizard, batch=3)[:, None]  # (3, 1, H, W, 16): one state per run
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    advs = jax.tree.map(lambda a: jnp.stack([a, 0.9 * a, 1.1 * a]), lizard)

    def final(params, x, k, form):
        return scan_steps(architecture.GrowingCA().step(params, form), x, k, 4, remat=True)

    def over_states(form):
        f = lambda xs: jax.vmap(lambda x, k: final(lizard, x, k, form)[..., :4].sum())(xs, keys)  # noqa: E731
        return jax.jit(jax.grad(lambda xs: f(xs).sum()))(x0)

    def over_params(form):
        f = lambda ps: jax.vmap(lambda p, x, k: final(p, x, k, form)[..., 3].sum())(ps, x0, keys)  # noqa: E731
        return jax.jit(jax.grad(lambda ps: f(ps).sum()))(advs)

    def per_run(form):
        g = jax.grad(lambda p, x, k: final(p, x, k, form)[..., 3].sum())
        return jax.jit(jax.vmap(g))(advs, x0, keys)

    def nested(form):  # vmap over keys of vmap over states
        inner = lambda xs, k: jax.vmap(lambda x: final(lizard, x, k, form)[..., :4].sum())(xs)  # noqa: E731
        return jax.jit(jax.grad(lambda xs: jax.vmap(lambda k: inner(xs, k))(keys).sum()))(x0)

    _close(over_states("dense"), over_states("living"), 1e-5)
    _close(nested("dense"), nested("living"), 1e-5)
    for make in (over_params, per_run):
        for a, b in zip(jax.tree.leaves(make("dense")), jax.tree.leaves(make("living"))):
            _close(a, b, 1e-5)


def test_other_architectures():
    model = architecture.GrowingCA(
        hidden=32, perception="learned", perception_features=24, fire_rate=0.3
    )
    params = jax.tree.map(
        lambda a: a + 0.05 * jax.random.normal(jax.random.PRNGKey(1), a.shape),
        model.init(jax.random.PRNGKey(0)),
    )
    x0 = jnp.broadcast_to(model.seed(H, W), (2, H, W, 16))
    key = jax.random.PRNGKey(4)
    run = lambda form: jax.jit(lambda x: scan_steps(model.step(params, form), x, key, 20))(x0)  # noqa: E731
    _close(run("dense"), run("living"))


def test_forms_and_defaults():
    assert living.resolve_form("dense") == "dense"
    assert living.resolve_form("auto") == ("living" if jax.default_backend() == "cpu" else "dense")
    with pytest.raises(ValueError, match="step form"):
        living.resolve_form("sparse")
    with pytest.raises(ValueError, match="step form"):
        living.set_step_form("sparse")


def test_engine_sequential_runs_equal_vmapped_runs(lizard):
    config = growing.GrowingTrainConfig(
        pool_size=4, batch_size=2, min_steps=2, max_steps=3, damage_n=0
    )
    recipe = trainers.perturbation_recipe(config)
    grown = np.asarray(_grown(lizard, batch=1)[0])
    shared = {"base": lizard, "seed": growing.seed_state(H, W), "grown": grown}
    targets = np.stack([np.zeros((H, W, 4), np.float32), np.full((H, W, 4), 0.1, np.float32)])
    runs = {"target": targets}
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    outs = []
    for sequential in (True, False):
        states = engine.init_states(recipe, keys, shared, runs)
        chunk = engine.make_chunk(recipe, 2, 2, sequential=sequential)
        states, metrics = chunk(states, shared, runs)
        outs.append((states["params"], metrics["loss"]))
    _close(outs[0][1], outs[1][1], 1e-5)
    _close(outs[0][0], outs[1][0], 1e-5)


def test_scoped_form_and_programs_over_several_devices(lizard, monkeypatch):
    """``step_form`` scopes the default form (an explicit form still wins); a training
    program built with ``step_form="dense"`` (what the trainers pass when it spans several
    devices, where a living step's gather would cross them) builds no living step."""
    model = architecture.GrowingCA()
    with living.step_form("dense"):
        assert model.step(lizard).form == "dense"
        assert model.step(lizard, "living").form == "living"
    assert model.step(lizard).form == living.resolve_form()
    with pytest.raises(ValueError, match="step form"), living.step_form("sparse"):
        pass
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("batch",))
    from nca_adv.training import fit

    assert fit.step_form_for(mesh) is None and fit.step_form_for(None) is None

    calls = []
    real = living.living_step
    monkeypatch.setattr(living, "living_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = growing.GrowingTrainConfig(
        pool_size=4, batch_size=2, min_steps=2, max_steps=3, damage_n=0
    )
    recipe = trainers.perturbation_recipe(config)
    seed = growing.seed_state(H, W)
    shared = {"base": lizard, "seed": seed, "grown": seed}
    runs = {"target": np.zeros((1, H, W, 4), np.float32)}
    for form, expect_living in (("dense", False), ("living", True)):
        calls.clear()
        states = engine.init_states(recipe, jax.random.PRNGKey(0)[None], shared, runs)
        engine.make_chunk(recipe, 1, 1, step_form=form)(states, shared, runs)
        assert bool(calls) == expect_living, form
