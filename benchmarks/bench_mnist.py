"""MNIST CA speed: train-iteration time and evaluation digits/s, against the alternatives.

  python -m benchmarks.bench_mnist [--repeats=5]

Train iteration: the engine's (the MNIST recipe as ``train_mnist`` runs it: pool 160, B=16,
fresh and mutated digits, 20 steps, fwd+bwd+Adam, pool write-back), ``--train_iterations``
of them scanned in one jitted chunk, in three formulations of the same maths: alive cells
only (gathered 3x3 patches, K fixed for the data set, ours), the whole grid as im2col +
matmul, and the whole grid with ``lax.conv_general_dilated`` (the obvious port).
Evaluation: 200 steps on test digits, alive cells vs whole grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from benchmarks.common import emit, markdown_table, time_chunk, time_fn
from experiments.common import run
from nca_adv import io
from nca_adv.io import data
from nca_adv.models import mnist, perceive
from nca_adv.training import jobs, trainers

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (median reported).", lower_bound=1)
flags.DEFINE_integer("eval_digits", 500, "Digits per evaluation measurement.", lower_bound=2)
flags.DEFINE_string("model", "mnist", "Model to evaluate (shipped name, .npz, .json).")
flags.DEFINE_integer("train_iterations", 5, "Train iterations per timed chunk.", lower_bound=1)


def _step_lax(params, x, key, fire_rate=mnist.FIRE_RATE, noise_std=mnist.NOISE_STD):
    """The whole-grid step with the perception as lax.conv (the baseline formulation)."""
    k_fire, k_noise = jax.random.split(key)
    h = jax.nn.relu(perceive.conv3x3_lax(x, params["perceive_kernel"], params["perceive_bias"]))
    h = jax.nn.relu(h @ params["dense1"]["kernel"] + params["dense1"]["bias"])
    dx = h @ params["dense2"]["kernel"] + params["dense2"]["bias"]
    dx = dx + noise_std * jax.random.normal(k_noise, dx.shape)
    mask = (jax.random.uniform(k_fire, (*x.shape[:-1], 1)) <= fire_rate) & mnist.alive(x)
    return x.at[..., 1:].add(dx * mask)


def _lax_recipe(config: mnist.MnistTrainConfig):
    """The MNIST recipe with the whole-grid ``lax.conv`` step (the same maths)."""
    return trainers.mnist_family(
        config,
        None,
        make_step=lambda params, shared, batch, index: (
            lambda x, k: _step_lax(params, x, k, config.fire_rate, config.noise_std)
        ),
    )


def main(argv):
    del argv
    params = io.load_model(FLAGS.model, "mnist")
    splits = data.load_mnist()
    images = data.to_float(splits.test_images)
    labels = splits.test_labels.astype(np.int32)
    key = jax.random.PRNGKey(0)
    config = mnist.MnistTrainConfig()
    alive = jobs.mnist_job(None, [0], config, "alive", splits=splits)
    grid = jobs.mnist_job(None, [0], config, "grid", splits=splits)
    variants = {
        f"alive cells, K={alive.config['cells']} (ours)": alive.recipe,
        "grid im2col+matmul": grid.recipe,
        "grid lax.conv": _lax_recipe(config),
    }
    train = []
    for name, recipe in variants.items():
        s = time_chunk(recipe, grid.shared, grid.runs, FLAGS.train_iterations, FLAGS.repeats)
        rec = {
            "bench": "mnist_train_iteration",
            "formulation": name,
            "batch": config.batch_size,
            "steps": config.steps,
            "seconds": s,
        }
        emit(rec)
        train.append(rec)
    print(markdown_table(train, ["formulation", "seconds"]))

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
