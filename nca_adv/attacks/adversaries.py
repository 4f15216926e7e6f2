"""Adversarial cells (Randazzo et al., Distill 2021): a second CA of the same architecture
runs in a few cells of the grid and reprograms the collective.

The attack is a step transform, :func:`with_adversaries`; the masks say where the
adversaries sit (:func:`mnist_adversary_masks`, :func:`growing_adversary_masks`);
:func:`check_compatible` / :func:`load_adversary` pair a base with an adversary. The
evaluations are in :mod:`nca_adv.evaluation.adversary_eval`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from nca_adv import io
from nca_adv.attacks import transforms
from nca_adv.models import architecture, growing, mnist
from nca_adv.models.masks import ALPHA_CHANNEL

Step = Callable[[jax.Array, jax.Array], jax.Array]

MNIST_TARGET = 8  # the article's MNIST adversaries make every digit an 8
TARGET_ALPHA = 0.1  # growing adversaries sit where the mutated target has alpha >= 0.1
MAX_REDRAWS = 1000  # bound of "redraw until one adversary sits on the digit"


# ----------------------------------------------------------------------------- the mixed step
def with_adversaries(adv_step: Step, mask: jax.Array) -> WithAdversaries:
    """The attack as a transform ``Step -> Step``: where ``mask > 0`` the cell takes the
    adversary's step, elsewhere the base's, both computed from the same state and key.

    Each model draws its own fire mask (and MNIST noise) from the key and applies its own
    alive masking, exactly as its normal step. Sharing the key is sound: a cell keeps only
    one model's output, so the draws it keeps are those of one model, as with independent
    keys; and it makes mask 0 the base step and mask 1 the adversary step bit for bit.
    ``mask`` (0/1 or bool) must broadcast to the state's (..., H, W, 1).

    The transform is a pytree (:class:`WithAdversaries`): the mask and the adversary
    step's parameters are leaves, so a jitted function of the attacked step compiles once
    for every mask of one shape. ``adv_step``: a model's step (``model.step(params)``), a
    :class:`~nca_adv.models.architecture.CA`, or any function ``(x, key) -> x``.
    """
    mask = jnp.asarray(mask)
    if mask.ndim < 3 or mask.shape[-1] != 1:
        raise ValueError(f"adversary mask must have shape (..., H, W, 1), got {mask.shape}")
    return WithAdversaries(transforms.as_pytree_step(adv_step), mask)


@jax.tree_util.register_pytree_node_class
class WithAdversaries(transforms.Transform):
    """:func:`with_adversaries` as a value: ``adv_step`` and ``mask`` are its children."""

    def __init__(self, adv_step: Step, mask: jax.Array):
        self.adv_step, self.mask = adv_step, mask

    def tree_flatten(self):
        return (self.adv_step, self.mask), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def apply(self, base_step: Step, x: jax.Array, key: jax.Array) -> jax.Array:
        mask, adv_step = self.mask, self.adv_step
        cells = (*x.shape[:-1], 1)
        try:
            ok = np.broadcast_shapes(mask.shape, cells) == cells
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"adversary mask {mask.shape} does not broadcast to the state's cells {cells}"
            )
        if isinstance(base_step, growing.GrowingStep) and base_step.fusable_with(adv_step):
            # both Growing CAs on their living cells, one gather; the mask a traced input
            return growing.mixed_living_step(base_step, adv_step, mask)(x, key)
        # A select, not base * (1 - m) + adv * m: the arithmetic form is not the identity
        # bit for bit (0 * inf = nan from the unused model, -0.0 + 0.0 = +0.0), the
        # select is, and its gradient reaches each model only through its own cells.
        return jnp.where(mask > 0, adv_step(x, key), base_step(x, key))


# ----------------------------------------------------------------------------- masks
def check_fraction(p) -> None:
    """ValueError unless the adversary fraction ``p`` lies in [0, 1] (traced p: unchecked)."""
    if isinstance(p, jax.core.Tracer):
        return
    v = np.asarray(p, np.float64)
    if v.ndim or not np.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"adversary fraction p must be a number in [0, 1], got {p!r}")


def mnist_adversary_masks(key: jax.Array, shape: tuple[int, ...], p) -> jax.Array:
    """(..., H, W, 1) float 0/1 masks: uniform < ``p`` over the whole grid of ``shape``
    (..., H, W), background included (adversaries there never update, as dead cells)."""
    check_fraction(p)
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape[-2:]) < 1:
        raise ValueError(f"mask shape must be (..., H, W) with H, W >= 1, got {shape}")
    return (jax.random.uniform(key, (*shape, 1)) < p).astype(jnp.float32)


def target_alpha(target) -> jax.Array:
    target = jnp.asarray(target)
    if target.ndim == 3 and target.shape[-1] > ALPHA_CHANNEL:
        return target[..., ALPHA_CHANNEL]
    if target.ndim == 2:
        return target
    raise ValueError(
        f"expected a target (H, W, 4) RGBA or its alpha (H, W), got shape {target.shape}"
    )


def growing_adversary_mask(key: jax.Array, alpha: jax.Array, p) -> jax.Array:
    """One (H, W, 1) mask: uniform < p where the target's alpha >= 0.1."""
    on_target = (alpha >= TARGET_ALPHA)[..., None]
    return ((jax.random.uniform(key, (*alpha.shape, 1)) < p) & on_target).astype(jnp.float32)


def growing_adversary_masks(key: jax.Array, n: int, target, p) -> jax.Array:
    """(n, H, W, 1) float 0/1 masks: uniform < ``p`` AND alpha >= 0.1 of ``target``, the
    *mutated* padded target (H, W, 4) or its alpha (H, W): a tailless target puts no
    adversary in the tail. Mask i depends on ``split(key, n)[i]`` only."""
    check_fraction(p)
    if int(n) < 1:
        raise ValueError(f"need n >= 1 masks, got {n}")
    alpha = target_alpha(target)
    return jax.vmap(lambda k: growing_adversary_mask(k, alpha, p))(jax.random.split(key, int(n)))


def mnist_live_mask(
    key: jax.Array, image: jax.Array, p, ensure=True, max_redraws: int = MAX_REDRAWS
) -> jax.Array:
    """One digit's (H, W, 1) mask (:func:`mnist_adversary_masks` from ``fold_in(key, 0)``),
    with ``ensure`` (may be traced) redrawn until at least one adversary sits on a live
    cell: the article's 1 % protocol.

    Draw r uses ``fold_in(key, r)``; a ``lax.while_loop`` stops at the first draw that
    hits the digit (no host loop, vmappable), or after ``max_redraws`` draws (the last one
    is returned: only reached for p ~ 0 or a digit of a few cells).
    """
    live = (jnp.asarray(image) > mnist.ALIVE_THRESHOLD)[..., None]

    def draw(r):
        return mnist_adversary_masks(jax.random.fold_in(key, r), image.shape, p)

    def missing(carry):
        r, m = carry
        return ensure & (r < max_redraws - 1) & ~jnp.any((m > 0) & live)

    def redraw(carry):
        r, _ = carry
        return r + 1, draw(r + 1)

    return jax.lax.while_loop(missing, redraw, (jnp.int32(0), draw(0)))[1]


# ----------------------------------------------------------------------------- models
def model_kind(params) -> str:
    """``growing`` or ``mnist`` from the parameter tree (any architecture of the two
    families, :func:`nca_adv.models.architecture.infer`), or ``unknown``."""
    if isinstance(params, architecture.CA):
        return params.kind
    try:
        return architecture.infer(params).kind
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "unknown"


def check_compatible(base, adv) -> None:
    """ValueError unless the adversary can share the base's grid: CAs of the same kind
    with the same number of state channels (their hidden sizes and perception may
    differ). Plain step functions are taken on trust."""
    if callable(base) or callable(adv):
        return
    kinds = model_kind(base), model_kind(adv)
    if "unknown" in kinds or kinds[0] != kinds[1]:
        raise ValueError(
            f"adversary is a {kinds[1]} model but the base is a {kinds[0]} model; "
            "both must be CAs of the same kind"
        )
    cb, ca = architecture.bind(base).model.channels, architecture.bind(adv).model.channels
    if cb != ca:
        raise ValueError(
            f"adversary and base {kinds[0]} models differ in state channels ({ca} vs {cb}): "
            "they cannot share one grid"
        )


def trained_against(spec: str) -> str | None:
    """The base an adversary was trained against, when its training workdir recorded it
    (``config.json`` ``base`` of the workdir or of a sweep run's parent), else None."""
    from pathlib import Path

    path = Path(spec)
    for folder in (path, path.parent, path.parent.parent):
        config = folder / "config.json"
        if folder.is_dir() and config.is_file():
            try:
                base = json.loads(config.read_text()).get("base")
            except (OSError, ValueError, AttributeError):
                return None
            if base is None:
                return None
            base_path = Path(base)
            if not base_path.is_absolute() and (folder / base_path).exists():
                base = str(folder / base_path)  # recorded relative to the workdir
            return str(base)
    return None


def load_adversary(spec: str, kind: str, base_params: dict | None = None) -> dict:
    """An adversary model spec (shipped name, .npz, TF.js .json, workdir; see
    :func:`io.load_model`) -> params of ``kind``, checked against ``base_params``. When the
    adversary's workdir recorded the base it was trained against and that base's weights
    differ from ``base_params``, a one-line warning says so (attacks rarely transfer)."""
    return load_adversary_ca(spec, kind, base_params).params


def load_adversary_ca(spec: str, kind: str, base=None) -> architecture.CA:
    """:func:`load_adversary` as a :class:`~nca_adv.models.architecture.CA`. With a base
    given as a CA, the adversary runs at the base's fire rate (the mixed step draws one
    fire mask for both; a file recording another rate gives a warning)."""
    try:
        ca = io.load_ca(spec, kind)
    except io.ModelFormatError as e:
        raise ValueError(f"adversary model {spec!r} is not a usable {kind} model: {e}") from e
    if isinstance(base, architecture.CA) and kind == "growing":
        if ca.model.fire_rate != base.model.fire_rate:
            logging.warning(
                "adversary %s records fire rate %s; it runs at the base's %s",
                spec,
                ca.model.fire_rate,
                base.model.fire_rate,
            )
            ca = architecture.CA(
                dataclasses.replace(ca.model, fire_rate=base.model.fire_rate), ca.params
            )
    _check_against(spec, kind, ca.params, base)
    return ca


def _check_against(spec: str, kind: str, params, base) -> None:
    base_params = base.params if isinstance(base, architecture.CA) else base
    if base_params is not None:
        check_compatible(base_params, params)
        recorded = trained_against(spec)
        if recorded is not None:
            try:
                trained_base = io.load_model(recorded, kind)
            except (OSError, ValueError):
                trained_base = None
            same = trained_base is not None and all(
                np.array_equal(np.asarray(a), np.asarray(b))
                for a, b in zip(jax.tree.leaves(trained_base), jax.tree.leaves(base_params))
            )
            if not same:
                logging.warning(
                    "adversary %s was trained against base %s, not the base given here: "
                    "expect a weaker (or exploding) attack",
                    spec,
                    recorded,
                )
