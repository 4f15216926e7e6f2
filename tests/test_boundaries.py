"""The public boundaries: a wrong shape, dtype or model is refused in one line naming what
was expected (not a flax/JAX internal error), numpy scalars are numbers, and the attack
transforms are pytrees whose arrays are traced (one compilation for many masks)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nca_adv
from nca_adv import io
from nca_adv.attacks import adversaries, perturbation, transforms
from nca_adv.io import targets
from nca_adv.models import architecture, growing
from nca_adv.training import engine, trainers

KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def lizard():
    return io.load_model("lizard", "growing")


def _one_line(excinfo, *words):
    text = str(excinfo.value)
    assert "\n" not in text, text
    for w in words:
        assert w in text, text
    return text


@pytest.mark.parametrize("channels", [3, 17])
def test_a_state_of_other_channels_is_one_line(lizard, channels):
    ca = nca_adv.CA(nca_adv.GrowingCA(), lizard)
    with pytest.raises(ValueError) as e:
        nca_adv.rollout(ca.step, jnp.zeros((12, 12, channels)), KEY, 2)
    _one_line(e, "(..., H, W, 16)", str(channels))


@pytest.mark.parametrize(
    "model, missing",
    [
        (nca_adv.GrowingCA(hidden=64), "expected (48, 64)"),
        (nca_adv.GrowingCA(perception="learned"), "missing perceive_kernel"),
    ],
)
def test_params_of_another_architecture_are_one_line(lizard, model, missing):
    with pytest.raises(ValueError) as e:
        nca_adv.CA(model, lizard).step(model.seed(12, 12), KEY)
    _one_line(e, "do not fit", missing)
    with pytest.raises(ValueError, match="do not fit"):
        nca_adv.CA(model, lizard).check()


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bfloat16])
def test_a_state_of_another_dtype_is_one_line(lizard, dtype):
    step = nca_adv.GrowingCA().step(lizard)
    with pytest.raises(ValueError) as e:
        nca_adv.rollout(step, jnp.zeros((12, 12, 16), dtype), KEY, 2)
    _one_line(e, "float32", jnp.dtype(dtype).name)


def test_a_2d_state_is_one_line(lizard):
    with pytest.raises(ValueError) as e:
        nca_adv.CA(nca_adv.GrowingCA(), lizard).step(jnp.zeros((12, 16)), KEY)
    _one_line(e, "(..., H, W, 16)", "(12, 16)")


def test_an_unbatched_mnist_state_is_one_line():
    ca = io.load_ca("mnist", "mnist")
    with pytest.raises(ValueError) as e:
        ca.step(jnp.zeros((28, 28, 20)), KEY)
    _one_line(e, "(B, H, W, 20)", "x[None]")


def test_perturbation_of_the_wrong_size_or_non_finite_is_refused(lizard):
    step = nca_adv.GrowingCA().step(lizard)
    x = nca_adv.GrowingCA().seed(12, 12)
    with pytest.raises(ValueError) as e:
        nca_adv.perturb(jnp.eye(15))(step)(x, KEY)
    _one_line(e, "15x15", "16 channels")
    with pytest.raises(ValueError) as e:
        nca_adv.perturb(jnp.full((16, 16), jnp.nan))
    _one_line(e, "NaN")
    with pytest.raises(ValueError, match="square"):
        nca_adv.perturb(jnp.ones((16, 4)))


def test_growing_loss_refuses_a_target_of_another_size():
    with pytest.raises(ValueError) as e:
        growing.growing_loss(jnp.zeros((2, 12, 12, 16)), jnp.zeros((10, 10, 4)))
    _one_line(e, "(10, 10, 4)", "(2, 12, 12, 16)")


def test_load_target_refuses_a_negative_padding():
    with pytest.raises(ValueError) as e:
        targets.load_target("lizard", padding=-1)
    _one_line(e, "padding", "-1")


def test_numpy_scalars_are_rates():
    m = nca_adv.GrowingCA(fire_rate=np.float32(0.3))
    assert m.fire_rate == 0.3 and m == nca_adv.GrowingCA(fire_rate=0.3)
    assert nca_adv.MnistCA(fire_rate=np.float64(0.4)).fire_rate == 0.4
    with pytest.raises(ValueError, match="fire_rate"):
        nca_adv.GrowingCA(fire_rate=np.float32(1.5))


def test_mnist_params_saved_as_growing_are_named(tmp_path):
    mnist_params = io.load_model("mnist", "mnist")
    with pytest.raises(io.ModelFormatError) as e:
        io.save_params(tmp_path / "x.npz", mnist_params, "growing")
    _one_line(e, "mnist CA parameters", "not a growing")
    with pytest.raises(ValueError, match="MNIST CA parameters"):
        architecture.infer(mnist_params, "growing")


def test_a_learned_perception_growing_ca_is_not_mnist():
    model = nca_adv.GrowingCA(hidden=32, perception="learned", perception_features=24)
    params = model.init(KEY)
    assert io.weights._params_kind(params) == "growing"
    assert adversaries.model_kind(params) == "growing"


# ----------------------------------------------------------------------------- fire rate
def test_save_params_records_a_cas_fire_rate_and_warns_for_a_bare_dict(tmp_path, lizard):
    ca = nca_adv.CA(nca_adv.GrowingCA(fire_rate=0.3), lizard)
    nca_adv.save_params(tmp_path / "a.npz", ca)
    assert nca_adv.load_ca(str(tmp_path / "a.npz"), "growing").model.fire_rate == 0.3
    with pytest.warns(UserWarning, match="does not say its fire rate"):
        nca_adv.save_params(tmp_path / "b.npz", lizard, "growing")
    with pytest.raises(io.ModelFormatError, match="contradicts"):
        nca_adv.save_params(tmp_path / "c.npz", ca, model=nca_adv.GrowingCA())


def test_growing_step_of_honours_a_cas_rate(lizard):
    ca = nca_adv.CA(nca_adv.GrowingCA(fire_rate=0.3), lizard)
    assert trainers.growing_step_of(ca).fire_rate == 0.3
    assert trainers.growing_step_of(lizard, 0.3).fire_rate == 0.3
    with pytest.raises(ValueError, match="contradicts"):
        trainers.growing_step_of(ca, 0.5)


# ----------------------------------------------------------------------------- pytrees
def test_attack_transforms_are_pytrees_and_compile_once(lizard):
    """A loop over 8 masks of one shape through a composed attack compiles once; the
    fused living step of two Growing CAs is kept (the mask a traced input)."""
    model = nca_adv.GrowingCA()
    base, adv = model.step(lizard, "living"), model.step(lizard, "living")
    a = perturbation.interpolate(jnp.asarray(perturbation.load_matrix("tail")), 0.5)
    x = model.seed(16, 16)
    traces = []

    @jax.jit
    def run(step, x, key):
        traces.append(1)
        return nca_adv.rollout(step, x, key, 3)

    masks = (jax.random.uniform(KEY, (8, 16, 16, 1)) < 0.2).astype(jnp.float32)
    outs = []
    for m in masks:
        attacked = nca_adv.chain(nca_adv.perturb(a), nca_adv.with_adversaries(adv, m))(base)
        assert jax.tree.leaves(attacked)  # arrays are leaves, not closure constants
        outs.append(run(attacked, x, KEY))
    assert len(traces) == 1
    assert run._cache_size() == 1
    # the same numbers as the attack built inside the program
    inner = nca_adv.chain(nca_adv.perturb(a), nca_adv.with_adversaries(adv, masks[3]))(base)
    np.testing.assert_allclose(outs[3], nca_adv.rollout(inner, x, KEY, 3), atol=1e-6)
    # and the fusion of the two living Growing steps is still taken
    mixed = nca_adv.with_adversaries(adv, masks[0])(base)
    assert isinstance(mixed, transforms.Transformed) and base.fusable_with(adv)


def test_chain_keeps_plain_function_transforms(lizard):
    step = nca_adv.GrowingCA().step(lizard)
    calls = []

    def mine(inner):
        def s(x, k):
            calls.append(1)
            return inner(x, k)

        return s

    out = nca_adv.chain(nca_adv.identity(), mine)(step)(nca_adv.GrowingCA().seed(8, 8), KEY)
    assert calls and out.shape == (8, 8, 16)


def test_evaluations_take_a_pytree_step(lizard):
    from nca_adv.evaluation import perturbation_eval

    step = nca_adv.GrowingCA(fire_rate=0.3).step(lizard)
    stepper = architecture.as_stepper(step, "growing")
    assert isinstance(stepper, architecture.PytreeStep) and stepper.channels == 16
    x = perturbation_eval.grow(step, 12, 12, jax.random.split(KEY, 2), 3)
    ca = nca_adv.CA(nca_adv.GrowingCA(fire_rate=0.3), lizard)
    np.testing.assert_array_equal(
        x, perturbation_eval.grow(ca, 12, 12, jax.random.split(KEY, 2), 3)
    )


def test_perturbation_evaluation_of_a_non_16_channel_model():
    from nca_adv.evaluation import perturbation_eval

    model = nca_adv.GrowingCA(channels=8, hidden=16)
    ca = nca_adv.CA(model, model.init(KEY))
    x0 = perturbation_eval.grow(ca, 10, 10, jax.random.split(KEY, 2), 2)
    runs = perturbation_eval.run_phases(
        ca, jnp.eye(8), x0, jax.random.split(KEY, 2), [(True, 0, 2)]
    )
    assert runs[-1].state.shape == (2, 10, 10, 8)
    with pytest.raises(ValueError, match="8x8"):
        perturbation_eval.run_phases(ca, jnp.eye(16), x0, jax.random.split(KEY, 2), [(True, 0, 2)])


# ----------------------------------------------------------------------------- engine
def test_engine_train_takes_new_style_keys():
    model = nca_adv.GrowingCA(hidden=8)
    cfg = growing.GrowingTrainConfig(
        pool_size=4, batch_size=2, min_steps=1, max_steps=2, damage_n=0
    )
    recipe = trainers.growing_recipe(cfg, model)
    target = np.zeros((10, 10, 4), np.float32)
    target[3:7, 3:7] = 1.0
    shared = {"seed": model.seed(10, 10)}
    runs = engine.stack_runs([{"target": target}])
    new = jax.random.key(3)[None]
    _, m_new = engine.train(recipe, new, shared, runs, 2)
    _, m_old = engine.train(recipe, jax.random.PRNGKey(3)[None], shared, runs, 2)
    np.testing.assert_array_equal(m_new["loss"], m_old["loss"])
    assert "alive" in m_new
    with pytest.raises(ValueError, match="one key per run"):
        engine.train(recipe, jax.random.key(3), shared, runs, 2)


def test_mnist_jobs_take_the_bases_own_rates():
    from nca_adv.models import mnist
    from nca_adv.training import jobs

    cfg = mnist.MnistTrainConfig()
    out = jobs._honour_mnist_rates(cfg, nca_adv.MnistCA(fire_rate=0.3, noise_std=0.01))
    assert out.fire_rate == 0.3 and out.noise_std == 0.01
    assert jobs._honour_mnist_rates(cfg, nca_adv.MnistCA()) is cfg
