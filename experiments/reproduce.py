"""The main job: a report of the shipped pretrained models, written to out/report.html.

  python -m experiments.reproduce [--out=out] [--mnist_digits=200] [--swap_digits=16]

Sized for `make run` to stay under 3 minutes on a 2-core CPU, from the models shipped in
the package only (no network). When ../shared/reference (the authors' published models) is
beside the project, their numbers are measured alongside, on the same runs and digits.
Every number in the report says how many runs or digits it is measured on; `results.json`
holds the numbers, the counts and the wall and CPU seconds of each section (`timing`,
`cpu_seconds`).

Sections, in order (`--sections`), each `section(rep, out, ref, key) -> dict` in its own
module: experiments.report_lizard, report_mnist, report_adversaries, report_perturbations
(the last two run when their modules are there). Each section compiles one program per
shape and reuses it: on the CPU, XLA compilation is a large part of the time.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
from absl import flags, logging

from nca_adv.media import report

from . import common, report_lizard, report_mnist
from . import report_media as media

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "out", "Output folder for report.html and its media.")
flags.DEFINE_integer("seed", 0, "PRNG seed of every rollout in the report.")
flags.DEFINE_integer(
    "growing_runs",
    8,
    "Lizard rollouts from the seed: the loss at step 200 averages all of them; the first "
    "half then grows on uncut to step 400, the second half is cut (regeneration).",
    lower_bound=2,
)
flags.DEFINE_integer(
    "mnist_digits",
    200,
    "First N test digits for the MNIST accuracy at step 200 (both models, same digits).",
    lower_bound=16,
    upper_bound=10_000,
)
flags.DEFINE_integer(
    "swap_digits",
    16,
    "First M of those digits for the swap protocol (200 steps, swap, 200 more) and its "
    "video (which shows up to 16 of them).",
    lower_bound=2,
)
flags.DEFINE_list(
    "sections",
    ["lizard", "mnist", "adversaries", "perturbations", "beyond"],
    "Report sections, in order. 'adversaries' and 'perturbations' run when their modules "
    "(experiments/report_<name>.py) exist.",
)
flags.DEFINE_string(
    "reference",
    str(Path(__file__).resolve().parents[1].parent / "shared" / "reference"),
    "The authors' published models (optional; compared when present).",
)

# Sections run by other modules: name -> module with `section(rep, out, ref, key) -> dict`.
OPTIONAL_SECTIONS = {
    "adversaries": f"{__package__}.report_adversaries",
    "perturbations": f"{__package__}.report_perturbations",
    "beyond": f"{__package__}.report_beyond",  # beyond the article
}
# Each section draws from fold_in(key, its number): adding a section changes no other.
SECTION_KEYS = {"lizard": 0, "mnist": 1, "adversaries": 2, "perturbations": 3, "beyond": 4}


def _section(name: str) -> Callable | None:
    """The function that makes section ``name``; None for an optional one not written yet."""
    if name == "lizard":
        return functools.partial(report_lizard.section, runs=FLAGS.growing_runs)
    if name == "mnist":
        return functools.partial(
            report_mnist.section, digits=FLAGS.mnist_digits, swap_digits=FLAGS.swap_digits
        )
    if name not in OPTIONAL_SECTIONS:
        raise ValueError(f"--sections: unknown section {name!r}; choose from {list(SECTION_KEYS)}")
    module = OPTIONAL_SECTIONS[name]
    if importlib.util.find_spec(module) is None:
        return None
    return importlib.import_module(module).section


def main(argv):
    del argv
    t0, c0 = time.perf_counter(), media.cpu_seconds()
    if FLAGS.swap_digits > FLAGS.mnist_digits:
        raise ValueError(
            f"--swap_digits={FLAGS.swap_digits} must not exceed --mnist_digits="
            f"{FLAGS.mnist_digits} (the swap digits are the first of those)"
        )
    sections = {name: _section(name) for name in FLAGS.sections}
    out = common.check_output_dir(FLAGS.out, "out")
    out.mkdir(parents=True, exist_ok=True)
    ref = Path(FLAGS.reference)
    ref = ref if (ref / "original").is_dir() else None
    if ref is None:
        logging.warning(
            "reference models not found at %s: the report shows the shipped models only",
            FLAGS.reference,
        )
    rep = report.HtmlReport(out / "report.html", "nca-adv: reproduction report")
    rep.text(f"JAX {jax.__version__} on {jax.devices()[0].platform}; seed {FLAGS.seed}.")
    key = jax.random.PRNGKey(FLAGS.seed)
    results, timing, cpu = {}, {}, {}
    for name, make in sections.items():
        if make is None:
            logging.warning("section %s: %s not found, skipped", name, OPTIONAL_SECTIONS[name])
            rep.text(f"(Section {name!r} skipped: {OPTIONAL_SECTIONS[name]} is not there.)")
            continue
        # Every section, the attack ones included, is section(rep, out, ref, key) -> dict.
        with media.timed(name, timing, cpu):
            results.update(make(rep, out, ref, jax.random.fold_in(key, SECTION_KEYS[name])))
    results["timing"] = timing
    results["cpu_seconds"] = cpu
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["cpu_seconds_total"] = round(media.cpu_seconds() - c0, 1)
    rep.heading("Timing")
    rep.table(
        ["section", "wall seconds", "CPU seconds"],
        [[k, timing[k], cpu[k]] for k in timing]
        + [["total (with start-up)", results["seconds"], results["cpu_seconds_total"]]],
    )
    rep.text(
        f"On {jax.devices()[0].platform}, XLA compilation included (once per shape); CPU "
        "seconds count every thread of this process and of ffmpeg."
    )
    (out / "results.json").write_text(json.dumps(results, indent=1))
    path = rep.write()
    print(json.dumps({"report": str(path), **results}))


def run():
    """Console-script entry point."""
    common.run(main)


if __name__ == "__main__":
    run()
