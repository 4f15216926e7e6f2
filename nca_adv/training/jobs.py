"""Training jobs: a recipe with its constants, runs and export, built from plain settings.

The launches (``experiments/train_*``) and ``train_all`` build a :class:`Job` and hand it
to :func:`run_job`; a sweep is a job with several runs (targets x fractions x seeds),
trained in one program. Each run's result is written to its folder (``params.npz``, or
``perturbation.npy`` for a state perturbation) beside its ``metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging

from nca_adv import io
from nca_adv.attacks import perturbation
from nca_adv.io import data, targets
from nca_adv.models import architecture, growing, mnist
from nca_adv.models.masks import alive_mask
from nca_adv.training import distributed, engine, runtime, trainers
from nca_adv.training.fit import Run, fit, placement, run_dirs

GROW_STEPS = 200  # the adversary and perturbation pools start from the lizard grown this long

# The shipped attack of each mutated target: what ``init="shipped"`` carries on from.
SHIPPED_PERTURBATIONS = {
    "lizard_no_tail": "tail",
    "lizard_no_leg": "leg",
    "lizard_no_arm": "arm",
    "lizard_no_head": "head",
    "lizard_red": "red",
    "lizard_blue": "blue",
}
SHIPPED_ADVERSARIES = {
    "lizard_no_tail": "lizard_no_tail_adversary",
    "lizard_red": "lizard_red_adversary",
}


def resolve_init(init: str | None, kind: str, target_specs: Sequence[str]) -> str | None:
    """The starting point of an attack training: None or ``"none"`` (the recipe's own
    start), ``"shipped"`` (the shipped attack of the one target: ``kind`` is
    ``perturbation`` or ``adversary``) or a path / shipped name, returned as is."""
    if init in (None, "", "none"):
        return None
    if init != "shipped":
        return init
    table = SHIPPED_PERTURBATIONS if kind == "perturbation" else SHIPPED_ADVERSARIES
    names = {_target_name(t) for t in target_specs}
    if len(names) != 1 or next(iter(names)) not in table:
        raise ValueError(
            f"init=shipped needs one target with a shipped {kind} ({sorted(table)}), "
            f"got {sorted(names)}"
        )
    return table[next(iter(names))]


class Job(NamedTuple):
    """Everything a training needs: ``recipe``, ``shared`` constants, the ``runs``, the
    ``config`` saved beside the checkpoints, and ``save(params, folder) -> path``."""

    recipe: engine.Recipe
    shared: Any
    runs: list[Run]
    config: dict
    save: Callable[[Any, Path], Path]


def _names(*axes: tuple[str, Sequence]) -> list[tuple[str, tuple]]:
    """Run names and values of the cartesian product of (label, values) axes; an axis
    with one value does not appear in the names."""
    combos = list(itertools.product(*(values for _, values in axes)))
    named = []
    for combo in combos:
        parts = [
            f"{label}{value}" if label else str(value)
            for (label, values), value in zip(axes, combo)
            if len(values) > 1
        ]
        named.append(("_".join(parts) or "0", combo))
    return named


def _save_model(kind: str, model=None) -> Callable[[Any, Path], Path]:
    def save(params, folder: Path) -> Path:
        path = folder / "params.npz"
        params = jax.device_get(params)
        io.save_params(path, params, kind, model or architecture.infer(params, kind))
        return path

    return save


def _save_adversary(base: architecture.GrowingCA) -> Callable[[Any, Path], Path]:
    """An adversary's params.npz: its own architecture at the base's fire rate."""

    def save(params, folder: Path) -> Path:
        path = folder / "params.npz"
        params = jax.device_get(params)
        model = dataclasses.replace(architecture.infer(params, "growing"), fire_rate=base.fire_rate)
        io.save_params(path, params, "growing", model)
        return path

    return save


def _mnist_save(model: architecture.MnistCA) -> Callable[[Any, Path], Path]:
    def save(params, folder: Path) -> Path:
        path = folder / "params.npz"
        params = jax.device_get(params)
        arch = architecture.infer(params, "mnist")
        io.save_params(path, params, "mnist", dataclasses.replace(arch, **_rates(model)))
        return path

    return save


def _honour_mnist_rates(config, model: architecture.MnistCA):
    """The MNIST config at the frozen base's own fire rate and noise (a config left at the
    defaults that says otherwise is replaced, one that asked for other rates too, with a
    warning)."""
    want = _rates(model)
    have = {k: float(getattr(config, k)) for k in want}
    if have != want:
        asked = have != {"fire_rate": mnist.FIRE_RATE, "noise_std": mnist.NOISE_STD}
        (logging.warning if asked else logging.info)(
            "the base runs at its own %s; the training config's %s is dropped", want, have
        )
        config = config._replace(**want)
    return config


def _rates(model) -> dict:
    return {"fire_rate": model.fire_rate, "noise_std": model.noise_std}


def load_base(base, kind: str = "growing") -> tuple[architecture.CA, str]:
    """A frozen base given as a spec (shipped name, ``.npz``, workdir: :func:`io.load_ca`)
    or as a :class:`~nca_adv.models.architecture.CA`: (the CA, what config.json records)."""
    if isinstance(base, architecture.CA):
        if base.kind != kind:
            raise ValueError(f"expected a {kind} CA as the base, got a {base.kind} one")
        return base.check(), "<a CA given in memory>"
    if isinstance(base, dict):
        raise ValueError(
            "a bare params dict does not say its fire rate: give the base as a CA "
            "(nca_adv.CA(model, params)) or a file spec"
        )
    return io.load_ca(str(base), kind), str(base)


def _honour_rate(config, model, what: str):
    """The config at the model's own fire rate: a config that says otherwise is dropped,
    with a warning (the model is the rule; config.json then records one rate)."""
    if float(config.fire_rate) != model.fire_rate:
        # a config left at the default says nothing: only a rate asked for is worth a warning
        log = logging.warning if config.fire_rate != growing.FIRE_RATE else logging.info
        log(
            "%s runs at its own fire rate %s; the training config's fire_rate %s is dropped",
            what,
            model.fire_rate,
            config.fire_rate,
        )
        config = config._replace(fire_rate=model.fire_rate)
    return config


def _save_matrix(matrix, folder: Path) -> Path:
    path = folder / "perturbation.npy"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(jax.device_get(perturbation.symmetric(matrix)), np.float32))
    return path


def _target_name(spec: str) -> str:
    return Path(spec).stem if spec.lower().endswith(".png") else spec


def growing_job(
    target_specs: Sequence[str],
    seeds: Sequence[int],
    config: growing.GrowingTrainConfig,
    padding: int,
    model: architecture.GrowingCA | None = None,
) -> Job:
    """The base Growing CA, one run per (target, seed); ``model`` the architecture
    (default: the article's with the config's fire rate)."""
    loaded, (h, w) = _load_targets(target_specs, padding)
    runs = [
        Run(name, seed, {"target": loaded[t]})
        for name, (t, seed) in _names(("", list(loaded)), ("seed", seeds))
    ]
    if model is not None:
        config = _honour_rate(config, model, "the model trained")
    recipe = trainers.growing_recipe(config, model)
    model = model or architecture.GrowingCA(fire_rate=config.fire_rate)
    shared = {"seed": model.seed(h, w)}
    cfg = {"trainer": "growing", "targets": list(target_specs), "seeds": list(seeds)}
    cfg.update(config._asdict(), padding=padding)
    if model != architecture.GrowingCA(fire_rate=config.fire_rate):
        cfg["architecture"] = architecture.to_dict(model)  # recorded only when not the default
    return Job(recipe, shared, runs, cfg, _save_model("growing", model))


def _load_targets(specs: Sequence[str], padding: int) -> tuple[dict[str, np.ndarray], tuple]:
    """Targets by run name, and their one grid size (a sweep's runs share one program)."""
    if not specs:
        raise ValueError("no target given")
    loaded = {_target_name(t): targets.load_target(t, padding=padding) for t in specs}
    shapes = {k: v.shape for k, v in loaded.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"the targets of one sweep must have one size, got {shapes}")
    return loaded, next(iter(shapes.values()))[:2]


GROWN_RGBA_LIMIT = 1.5  # a healthy grown pattern's RGBA lies in about [0, 1]


def _grown(base, h: int, w: int, steps: int | None = None) -> jax.Array:
    """One grown pattern for the whole job (the pools start from copies of it): the base
    grown ``steps`` (default :data:`GROW_STEPS`) steps from the seed. A base that is not
    stable that long (a rule trained for fewer steps) or dies gives a warning: its
    attack would start from a broken pattern."""
    steps = GROW_STEPS if steps is None else steps
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"grow_steps must be an integer >= 0, got {steps!r}")
    grown = trainers.grow(base, h, w, steps, jax.random.PRNGKey(0))
    g = np.asarray(grown)
    alive = int(np.asarray(alive_mask(grown)).sum())
    peak = float(np.max(np.abs(g[..., :4]))) if np.isfinite(g).all() else float("inf")
    if alive == 0:
        logging.warning(
            "the base grown for %d steps from the seed is dead (no living cell): the attack "
            "pool starts from an empty grid; pass grow_steps= (the length the base was "
            "trained for)",
            steps,
        )
    elif peak > GROWN_RGBA_LIMIT:
        logging.warning(
            "the base grown for %d steps is unstable (max |RGBA| = %.3g, a healthy pattern "
            "stays within ~1): the attack pool starts from it and its losses will read "
            "high; pass grow_steps= (the length the base was trained for)",
            steps,
            peak,
        )
    return grown


def growing_adversary_job(
    base: str | architecture.CA,
    target_specs: Sequence[str],
    fractions: Sequence[float],
    seeds: Sequence[int],
    config: growing.GrowingTrainConfig,
    padding: int,
    adversary_init: str = "fresh",
    init_from: str | None = None,
    *,
    grow_steps: int | None = None,
) -> Job:
    """Adversarial cells for the Growing CA ``base``, one run per (target, p, seed);
    ``adversary_init`` see :func:`nca_adv.training.trainers.growing_adversary_recipe`;
    ``init_from`` (a shipped name, ``.npz`` or workdir) starts every run from that
    adversary's weights (a fresh optimiser and pool): training carries on from it.

    ``base``: a spec (:func:`nca_adv.io.load_ca`) or a
    :class:`~nca_adv.models.architecture.CA`; it keeps its own model: the base and its
    adversaries run at its fire rate (a config saying otherwise is dropped, with a
    warning), and the results are saved with it. ``grow_steps`` (default
    :data:`GROW_STEPS`): how long the base grows from the seed to start the pool (a base
    that is dead or unstable by then gives a warning). A bare params dict is refused: it
    cannot say its fire rate."""
    for p in fractions:
        _check_fraction(p)
    base_ca, base_spec = load_base(base)
    config = _honour_rate(config, base_ca.model, "the base")
    init_params = None
    if init_from is not None:
        from nca_adv.attacks import adversaries

        init_params = adversaries.load_adversary(init_from, "growing", base_ca.params)
        adversary_init = "given"
    loaded, (h, w) = _load_targets(target_specs, padding)
    runs = [
        Run(name, seed, {"target": loaded[t], "fraction": np.float32(p)})
        for name, (t, p, seed) in _names(("", list(loaded)), ("p", fractions), ("seed", seeds))
    ]
    shared = {"base": base_ca, "grown": _grown(base_ca, h, w, grow_steps)}
    cfg = {"trainer": "growing_adversary", "base": base_spec, "targets": list(target_specs)}
    cfg.update(fractions=list(fractions), seeds=list(seeds), padding=padding, **config._asdict())
    _record_base(cfg, base_ca, grow_steps)
    if adversary_init != "fresh":  # recorded only when set, so older workdirs still resume
        cfg["adversary_init"] = adversary_init
    if init_params is not None:
        shared["init"] = init_params
        cfg.update(init_from=init_from, init_sha256=_tree_hash(init_params))
    recipe = trainers.growing_adversary_recipe(config, adversary_init)
    return Job(recipe, shared, runs, cfg, _save_adversary(base_ca.model))


def _record_base(cfg: dict, base: architecture.CA, grow_steps: int | None) -> None:
    """Recorded only when not the defaults, so older workdirs still resume."""
    if base.model != architecture.GrowingCA(fire_rate=base.model.fire_rate):
        cfg["base_architecture"] = architecture.to_dict(base.model)
    if grow_steps is not None and grow_steps != GROW_STEPS:
        cfg["grow_steps"] = grow_steps


def perturbation_job(
    base: str | architecture.CA,
    target_specs: Sequence[str],
    seeds: Sequence[int],
    config: growing.GrowingTrainConfig,
    padding: int,
    init_from: str | None = None,
    optimizer: str = "adam",
    *,
    grow_steps: int | None = None,
) -> Job:
    """Global state perturbations of the Growing CA ``base``, one run per (target, seed).
    ``init_from`` (a shipped name or ``.npy``) starts every run from that matrix instead
    of the identity (a fresh optimiser and pool). ``optimizer``: ``adam`` (the article's:
    per-variable normalised gradient, Adam at ``config.lr`` then ``lr * lr_decay`` from
    ``lr_decay_at``) or ``ngd`` (normalised gradient descent: each step moves M by exactly
    ``config.lr`` in Frobenius norm along the gradient, on the same schedule).
    ``base`` and ``grow_steps``: as :func:`growing_adversary_job` (the base keeps its own
    model and fire rate)."""
    base_ca, base_spec = load_base(base)
    config = _honour_rate(config, base_ca.model, "the base")
    loaded, (h, w) = _load_targets(target_specs, padding)
    runs = [
        Run(name, seed, {"target": loaded[t]})
        for name, (t, seed) in _names(("", list(loaded)), ("seed", seeds))
    ]
    shared = {
        "base": base_ca,
        "seed": base_ca.model.seed(h, w),
        "grown": _grown(base_ca, h, w, grow_steps),
    }
    cfg = {"trainer": "perturbation", "base": base_spec, "targets": list(target_specs)}
    cfg.update(seeds=list(seeds), padding=padding, **config._asdict())
    _record_base(cfg, base_ca, grow_steps)
    if init_from is not None:
        shared["init"] = np.asarray(perturbation.load_perturbation(init_from), np.float32)
        if shared["init"].shape != (base_ca.channels,) * 2:
            raise ValueError(
                f"init_from {init_from!r} is a {shared['init'].shape} matrix; the base has "
                f"{base_ca.channels} state channels"
            )
        cfg.update(init_from=init_from, init_sha256=_tree_hash(shared["init"]))
    if optimizer not in runtime.OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {runtime.OPTIMIZERS}, got {optimizer!r}")
    opt = None
    if optimizer != "adam":  # recorded only when not the article's, so older workdirs resume
        cfg["optimizer"] = optimizer
        opt = runtime.normalized_descent(config.lr, {config.lr_decay_at: config.lr_decay})
    recipe = trainers.perturbation_recipe(config, opt)
    return Job(recipe, shared, runs, cfg, _save_matrix)


def _tree_hash(tree) -> str:
    """sha256 of a pytree's arrays: a starting point that changed is seen on resume."""
    import hashlib

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return h.hexdigest()


def mnist_cells(images: np.ndarray, step_form: str) -> int | None:
    """K of the alive-cell step for a data set (its largest digit), or None for the
    whole-grid step. ``auto``: alive cells on CPU, the whole grid on accelerators."""
    if step_form not in ("alive", "grid", "auto"):
        raise ValueError(f"step form must be alive, grid or auto, got {step_form!r}")
    if step_form == "auto":
        step_form = "alive" if jax.default_backend() == "cpu" else "grid"
    return mnist.cells_needed(data.to_float(images)) if step_form == "alive" else None


def mnist_job(
    mnist_dir: str | None,
    seeds: Sequence[int],
    config: mnist.MnistTrainConfig,
    step_form: str = "auto",
    splits: data.MnistSplits | None = None,
) -> Job:
    """The base Self-classifying MNIST CA on the 60k training digits, one run per seed."""
    splits = splits or data.load_mnist(mnist_dir)
    cells = mnist_cells(splits.train_images, step_form)
    shared = trainers.mnist_shared(splits.train_images, splits.train_labels)
    runs = [Run(name, seed, {}) for name, (seed,) in _names(("seed", seeds))]
    cfg = {"trainer": "mnist", "seeds": list(seeds), "cells": cells, **config._asdict()}
    model = architecture.MnistCA(fire_rate=config.fire_rate, noise_std=config.noise_std)
    return Job(trainers.mnist_recipe(config, cells), shared, runs, cfg, _mnist_save(model))


def mnist_adversary_job(
    base: str,
    mnist_dir: str | None,
    fractions: Sequence[float],
    seeds: Sequence[int],
    config: mnist.MnistTrainConfig,
    step_form: str = "auto",
    target_class: int = 8,
    splits: data.MnistSplits | None = None,
    init_from: str | None = None,
) -> Job:
    """Adversarial cells for the MNIST CA ``base``: every digit votes ``target_class``.
    ``init_from`` (a shipped name, ``.npz`` or workdir) starts from that adversary's
    weights with a fresh optimiser and pool."""
    for p in fractions:
        _check_fraction(p)
    if not 0 <= target_class < mnist.NUM_CLASSES:
        raise ValueError(f"target class must be a digit 0..9, got {target_class}")
    base_ca = io.load_ca(base, "mnist")
    config = _honour_mnist_rates(config, base_ca.model)
    base_params = base_ca.params
    splits = splits or data.load_mnist(mnist_dir)
    cells = mnist_cells(splits.train_images, step_form)
    shared = trainers.mnist_shared(splits.train_images, splits.train_labels, base=base_params)
    runs = [
        Run(name, seed, {"fraction": np.float32(p)})
        for name, (p, seed) in _names(("p", fractions), ("seed", seeds))
    ]
    cfg = {"trainer": "mnist_adversary", "base": base, "fractions": list(fractions)}
    cfg.update(seeds=list(seeds), cells=cells, target_class=target_class, **config._asdict())
    if init_from is not None:
        shared["init"] = io.load_model(init_from, "mnist")
        cfg.update(init_from=init_from, init_sha256=_tree_hash(shared["init"]))
    recipe = trainers.mnist_adversary_recipe(config, cells, target_class)
    model = architecture.MnistCA(fire_rate=config.fire_rate, noise_std=config.noise_std)
    return Job(recipe, shared, runs, cfg, _mnist_save(model))


def _save_hardened(config=None) -> Callable[[Any, Path], Path]:
    """The hardened base as ``params.npz`` and its training adversary as ``adversary.npz``
    (both at the config's fire rate and noise)."""

    def save(params, folder: Path) -> Path:
        path = folder / "params.npz"
        params = jax.device_get(params)
        for name, p in (("params.npz", params["base"]), ("adversary.npz", params["adversary"])):
            model = architecture.infer(p, "mnist")
            if config is not None:
                model = dataclasses.replace(model, **_rates(config))
            io.save_params(folder / name, p, "mnist", model)
        return path

    return save


def mnist_hardened_job(
    base: str,
    adversary: str,
    mnist_dir: str | None,
    seeds: Sequence[int],
    config: mnist.MnistTrainConfig,
    step_form: str = "auto",
    *,
    max_fraction: float = 0.15,
    clean_share: float = 0.25,
    adversary_lr: float = 1e-3,
    splits: data.MnistSplits | None = None,
) -> Job:
    """A hardened MNIST CA (:func:`nca_adv.training.trainers.mnist_hardened_recipe`): the
    base ``base`` and the adversary ``adversary`` (its starting points) trained against
    each other; the result is the base (``params.npz``) and the adversary (``adversary.npz``)."""
    _check_fraction(max_fraction)
    if not 0.0 <= clean_share <= 1.0:
        raise ValueError(f"clean share must lie in [0, 1], got {clean_share}")
    base_ca = io.load_ca(base, "mnist")
    config = _honour_mnist_rates(config, base_ca.model)
    base_params = base_ca.params
    adversary_params = io.load_model(adversary, "mnist")
    splits = splits or data.load_mnist(mnist_dir)
    cells = mnist_cells(splits.train_images, step_form)
    shared = trainers.mnist_shared(
        splits.train_images, splits.train_labels, base=base_params, adversary=adversary_params
    )
    runs = [Run(name, seed, {}) for name, (seed,) in _names(("seed", seeds))]
    cfg = {"trainer": "mnist_hardened", "base": base, "adversary": adversary}
    cfg.update(seeds=list(seeds), cells=cells, max_fraction=max_fraction)
    cfg.update(clean_share=clean_share, adversary_lr=adversary_lr, **config._asdict())
    recipe = trainers.mnist_hardened_recipe(
        config,
        cells,
        max_fraction=max_fraction,
        clean_share=clean_share,
        adversary_lr=adversary_lr,
    )
    return Job(recipe, shared, runs, cfg, _save_hardened(config))


def _check_fraction(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"adversary fraction must lie in [0, 1], got {p}")


def _save_once(save: Callable[[Any, Path], Path], params: Any, folder: Path) -> Path:
    """``save(params, folder)`` on process 0; the other processes of a multi-host run save
    into a scratch folder only to learn the result's file name."""
    if distributed.is_main_process():
        return save(params, folder)
    with tempfile.TemporaryDirectory() as scratch:
        return folder / save(params, Path(scratch)).relative_to(scratch)


class TrainResult(NamedTuple):
    """An in-memory training's result: per run name its params and its metrics
    (``loss``: (iterations,) array, and the recipe's other metrics)."""

    params: dict[str, Any]
    metrics: dict[str, dict[str, np.ndarray]]


def train_job(job: Job, iterations: int, mesh=None) -> TrainResult:
    """Train ``job`` in memory (:func:`nca_adv.training.engine.train`): no workdir, no
    files; the same numbers as :func:`run_job` for the same job, and the same placement
    over ``mesh`` (whole runs per device when they divide evenly, else each batch split)."""
    from nca_adv.training.fit import _sequential, step_form_for

    state_sharding, batch_sharding = placement(mesh, len(job.runs), job.recipe.batch_size)
    keys = np.stack([jax.random.PRNGKey(r.seed) for r in job.runs])
    consts = engine.stack_runs([r.consts for r in job.runs])
    if state_sharding is None:
        states, metrics = engine.train(
            job.recipe, keys, job.shared, consts, iterations, batch_sharding
        )
    else:
        engine.check_recipe(job.recipe)
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        states = engine.init_states(job.recipe, jax.numpy.asarray(keys), job.shared, consts)
        states = distributed.put(states, state_sharding)
        consts = distributed.put(consts, state_sharding)
        shared = distributed.put(job.shared, replicated)
        chunk = engine.make_chunk(
            job.recipe,
            iterations,
            len(job.runs),
            None,
            sequential=_sequential(state_sharding),
            step_form=step_form_for(mesh),
        )
        states, metrics = chunk(states, shared, consts)
    params, out = {}, {}
    for i, run in enumerate(job.runs):
        params[run.name] = jax.device_get(engine.run_slice(states["params"], i))
        out[run.name] = {k: np.asarray(v[i]) for k, v in metrics.items()}
    _warn_dead({name: m.get("alive") for name, m in out.items()})
    return TrainResult(params, out)


def _warn_dead(alive: dict) -> None:
    """A warning for each run whose pattern died (living cells 0 at the end of training):
    a hollow target kills the seed while the loss still reads small."""
    for name, a in alive.items():
        if a is None or not len(np.atleast_1d(a)):
            continue
        if float(np.atleast_1d(a)[-1]) == 0.0:
            logging.warning(
                "run %s: no living cell is left after the last iteration's rollout (the "
                "pattern died: a hollow or empty target?); see the 'alive' metric",
                name,
            )


def run_job(
    job: Job,
    workdir: str | Path,
    iterations: int,
    *,
    chunk: int = 10,
    checkpoint_every: int = 100,
    resume: bool = False,
    mesh=None,
) -> dict:
    """Train ``job`` (see :func:`nca_adv.training.fit.fit`), save each run's result in its folder;
    a summary: per run its folder, result file and final loss."""
    states = fit(
        job.recipe,
        job.shared,
        job.runs,
        workdir,
        iterations,
        chunk=chunk,
        checkpoint_every=checkpoint_every,
        resume=resume,
        config=job.config,
        mesh=mesh,
    )
    from nca_adv.training.runtime import read_metrics

    params = distributed.host_value(states["params"])  # a collective in a multi-host run
    paths = [
        _save_once(job.save, engine.run_slice(params, r), folder)
        for r, folder in enumerate(run_dirs(workdir, job.runs))
    ]
    distributed.barrier("results saved")  # process 0's results and metrics are complete
    summary = {}
    for run, folder, path in zip(job.runs, run_dirs(workdir, job.runs), paths):
        last = read_metrics(folder / "metrics.jsonl")[-1]
        summary[run.name] = {"dir": str(folder), "result": str(path), "final_loss": last["loss"]}
        if "alive" in last:
            summary[run.name]["final_alive"] = last["alive"]
    _warn_dead({name: s.get("final_alive") for name, s in summary.items()})
    return summary
