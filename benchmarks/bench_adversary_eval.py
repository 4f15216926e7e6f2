"""The growing adversary evaluation with one fused living step against two living steps.

python -m benchmarks.bench_adversary_eval --repeats=3

``adversary_eval.growing_attack`` (the report's protocol: the shipped lizard and tailless
adversary, padding 24, 200 grown + 500 attacked steps, 10 % adversaries) timed with the
models given as CAs (``with_adversaries`` fuses the two living steps into one gather) and
as plain step functions (two living steps, each its own gather, the adversary's weights
baked into the program), alternately, median seconds per call. Also the largest difference
between the two forms' final states (the same maths: ~1e-6).
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
from absl import flags

from benchmarks.common import emit
from experiments import common
from nca_adv import io
from nca_adv.attacks import adversaries
from nca_adv.evaluation import adversary_eval
from nca_adv.io import targets

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 3, "Timed repeats per form (median reported).", lower_bound=1)
flags.DEFINE_integer("runs", 4, "Evaluation runs per call.", lower_bound=1)
common.define_device_flags()


def main(argv):
    del argv
    base = io.load_ca("lizard", "growing")
    adv = adversaries.load_adversary_ca("lizard_no_tail_adversary", "growing", base)
    target = targets.load_target("lizard_no_tail", padding=24)
    key = jax.random.PRNGKey(0)
    forms = {
        "fused": (base, adv),
        "two_steps": (lambda x, k: base.step(x, k), lambda x, k: adv.step(x, k)),
    }

    def call(form):
        b, a = forms[form]
        out = adversary_eval.growing_attack(b, a, target, key, FLAGS.runs, 0.1, 200, 500)
        return jax.block_until_ready(out.states)

    finals = {form: np.asarray(call(form)) for form in forms}  # compile, and compare
    times = {form: [] for form in forms}
    for _ in range(FLAGS.repeats):
        for form in forms:
            t0 = time.perf_counter()
            call(form)
            times[form].append(time.perf_counter() - t0)
    med = {form: statistics.median(t) for form, t in times.items()}
    for form in forms:
        emit({"case": "growing_attack", "form": form, "runs": FLAGS.runs, "s_per_call": med[form]})
    emit(
        {
            "case": "growing_attack",
            "speedup_fused": med["two_steps"] / med["fused"],
            "max_abs_difference": float(np.max(np.abs(finals["fused"] - finals["two_steps"]))),
        }
    )


if __name__ == "__main__":
    common.run(main)
