"""The algebra of step transforms: an attack is a function ``Step -> Step``, so attacks
compose like optax's gradient transformations.

``chain(t1, t2, ...)(step)`` applies ``t1`` first (innermost), then ``t2`` around it, and so
on: ``chain(perturb(A), with_adversaries(adv, m))(base)`` is the mixed step whose base part
is perturbed (the adversary cells run unperturbed), while
``chain(with_adversaries(adv, m), perturb(A))(base)`` perturbs every cell's state before the
mixed step. ``identity()`` changes nothing. Note that ``perturb(I)`` is *not* the identity:
the original's clip at +-3 and its alive masking still act (pass ``clip=None`` for the
unclipped form, which is the identity for A = I on states whose dead cells are zero).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

Step = Callable[[jax.Array, jax.Array], jax.Array]
Transform = Callable[[Step], Step]


def identity() -> Transform:
    """The transform that returns the step unchanged."""
    return lambda step: step


def chain(*transforms: Transform) -> Transform:
    """Compose transforms, the first applied innermost (closest to the base step)."""
    for i, t in enumerate(transforms):
        if not callable(t):
            raise TypeError(f"chain: argument {i} is not a step transform: {t!r}")

    def transform(step: Step) -> Step:
        for t in transforms:
            step = t(step)
        return step

    return transform
