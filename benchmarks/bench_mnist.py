"""MNIST CA speed: train-iteration time and evaluation digits/s, against the alternatives.

  python -m benchmarks.bench_mnist [--repeats=5]

Train iteration: B=16, 20 steps, fwd+bwd+Adam, three formulations of the same maths:
alive cells only (gathered 3x3 patches, ours), the whole grid as im2col + matmul, and the
whole grid with ``lax.conv_general_dilated`` (the obvious port). Evaluation: 200 steps on
test digits, alive cells vs whole grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from benchmarks.common import emit, markdown_table, time_fn
from experiments.common import run
from nca_adv import io
from nca_adv.io import data
from nca_adv.models import mnist, perceive
from nca_adv.training import runtime

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (median reported).", lower_bound=1)
flags.DEFINE_integer("eval_digits", 500, "Digits per evaluation measurement.", lower_bound=2)
flags.DEFINE_string("model", "mnist", "Model to run (shipped name, .npz, .json).")


def _step_lax(params, x, key, fire_rate=mnist.FIRE_RATE, noise_std=mnist.NOISE_STD):
    """The whole-grid step with the perception as lax.conv (the baseline formulation)."""
    k_fire, k_noise = jax.random.split(key)
    h = jax.nn.relu(perceive.conv3x3_lax(x, params["perceive_kernel"], params["perceive_bias"]))
    h = jax.nn.relu(h @ params["dense1"]["kernel"] + params["dense1"]["bias"])
    dx = h @ params["dense2"]["kernel"] + params["dense2"]["bias"]
    dx = dx + noise_std * jax.random.normal(k_noise, dx.shape)
    mask = (jax.random.uniform(k_fire, (*x.shape[:-1], 1)) <= fire_rate) & mnist.alive(x)
    return x.at[..., 1:].add(dx * mask)


def _grid_train_step(opt, step_fn, steps=20):
    def loss_fn(params, x0, labels, key):
        def body(x, i):
            return step_fn(params, x, jax.random.fold_in(key, i)), None

        x, _ = jax.lax.scan(jax.checkpoint(body), x0, jnp.arange(steps))
        return jnp.mean(mnist.l2_loss(x, mnist.label_maps(x0[..., 0], labels)))

    @jax.jit
    def step(params, opt_state, x0, labels, key):
        loss, g = jax.value_and_grad(loss_fn)(params, x0, labels, key)
        u, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, u), opt_state, loss

    return step


def main(argv):
    del argv
    params = io.load_model(FLAGS.model, "mnist")
    splits = data.load_mnist()
    images = data.to_float(splits.test_images)
    labels = splits.test_labels.astype(np.int32)
    opt = runtime.make_optimizer(1e-3, {})
    state = opt.init(params)
    x0 = mnist.seed_states(images[:16])
    lab = jnp.asarray(labels[:16])
    key = jax.random.PRNGKey(0)
    cells_step = mnist.make_mnist_train_step(opt, mnist.MnistTrainConfig())
    k = mnist.cells_needed(images[:16])
    variants = {
        "alive cells (ours)": lambda: cells_step(params, state, x0, lab, key, k),
        "grid im2col+matmul": lambda s=_grid_train_step(opt, mnist.mnist_step): s(
            params, state, x0, lab, key
        ),
        "grid lax.conv": lambda s=_grid_train_step(opt, _step_lax): s(params, state, x0, lab, key),
    }
    train = []
    for name, fn in variants.items():
        med, best = time_fn(fn, FLAGS.repeats)
        rec = {
            "bench": "mnist_train_iteration",
            "formulation": name,
            "batch": 16,
            "steps": 20,
            "seconds": med,
            "best": best,
        }
        emit(rec)
        train.append(rec)
    print(markdown_table(train, ["formulation", "seconds", "best"]))

    n = FLAGS.eval_digits
    ev = []
    # Alive cells, batched by size (the Evaluator), vs the whole grid in batches of 500.
    evaluator = mnist.Evaluator(params, batch_size=min(500, n // 2))
    evaluator.run(images[:n], labels[:n], key, 200)
    rec = {
        "bench": "mnist_eval",
        "formulation": "alive cells (ours)",
        "digits": n,
        "steps": 200,
        "digits_per_s": evaluator.digits_per_s,
    }
    emit(rec)
    ev.append(rec)

    @jax.jit
    def grid_eval(x):
        def body(x, i):
            return mnist.mnist_step(params, x, jax.random.fold_in(key, i)), None

        return jax.lax.scan(body, x, jnp.arange(200))[0]

    b = min(500, n)
    med, _ = time_fn(lambda: grid_eval(mnist.seed_states(images[:b])), 2)
    rec = {
        "bench": "mnist_eval",
        "formulation": "grid im2col+matmul",
        "digits": b,
        "steps": 200,
        "digits_per_s": b / med,
    }
    emit(rec)
    ev.append(rec)
    print(markdown_table(ev, ["formulation", "digits", "digits_per_s"]))


if __name__ == "__main__":
    run(main)
