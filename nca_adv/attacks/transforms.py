"""The algebra of step transforms: an attack is a function ``Step -> Step``, so attacks
compose like optax's gradient transformations.

``chain(t1, t2, ...)(step)`` applies ``t1`` first (innermost), then ``t2`` around it, and so
on: ``chain(perturb(A), with_adversaries(adv, m))(base)`` is the mixed step whose base part
is perturbed (the adversary cells run unperturbed), while
``chain(with_adversaries(adv, m), perturb(A))(base)`` perturbs every cell's state before the
mixed step. ``identity()`` changes nothing. Note that ``perturb(I)`` is *not* the identity:
the original's clip at +-3 and its alive masking still act (pass ``clip=None`` for the
unclipped form, which is the identity for A = I on states whose dead cells are zero).

Transforms are pytrees, as optax's states are: an adversary mask or a perturbation matrix
is a leaf, and so are the parameters of a model's step (``model.step(params)``) and the
step a transform makes. A jitted function taking the composed step as an argument is
traced once for every mask, fraction or matrix of one shape::

    run = jax.jit(lambda step, x, key: nca_adv.rollout(step, x, key, 100))
    for mask in masks:  # compiles once
        run(chain(perturb(A), with_adversaries(adv_step, mask))(base_step), x, key)

A plain function in :func:`chain` (or as a step) is kept as static structure: its own
closure constants are baked in.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

Step = Callable[[jax.Array, jax.Array], jax.Array]


def as_pytree_step(step) -> Callable:
    """``step`` itself when it is a pytree (a model's step, a transformed step), else the
    function wrapped as a pytree without leaves (its arrays are closure constants)."""
    from nca_adv.models import architecture

    if isinstance(step, architecture.CA):
        return step.model.step(step.params)
    if isinstance(step, architecture.PytreeStep):
        return step.fn
    if architecture.is_pytree_step(step):
        return step
    if not callable(step):
        raise TypeError(f"a step transform needs a step function (x, key) -> x, got {step!r}")
    return architecture.StepFn(step)


class Transform:
    """A step transform ``Step -> Step`` as a pytree (the attacks' arrays are its leaves):
    ``transform(step)`` is a :class:`Transformed` step, a pytree too, so jitting a function
    of it traces masks and matrices instead of baking them in. Subclasses define
    ``apply(inner, x, key)`` and the pytree methods."""

    def __call__(self, step) -> Transformed:
        return Transformed(self, as_pytree_step(step))

    def apply(self, inner: Step, x: jax.Array, key: jax.Array) -> jax.Array:
        raise NotImplementedError


@jax.tree_util.register_pytree_node_class
class Transformed:
    """``transform`` applied around ``inner``: the step ``(x, key) -> x``, a pytree of both."""

    def __init__(self, transform: Transform, inner: Step):
        self.transform, self.inner = transform, inner

    def tree_flatten(self):
        return (self.transform, self.inner), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    @property
    def channels(self):
        return getattr(self.inner, "channels", None)

    @property
    def kind(self):
        return getattr(self.inner, "kind", None)

    def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
        return self.transform.apply(self.inner, x, key)


@jax.tree_util.register_pytree_node_class
class FnTransform(Transform):
    """A transform written as a plain function ``Step -> Step`` (static: no leaves)."""

    def __init__(self, fn: Callable[[Step], Step]):
        self.fn = fn

    def tree_flatten(self):
        return (), self.fn

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux)

    def __call__(self, step):
        return self.fn(step)

    def __eq__(self, other):
        return isinstance(other, FnTransform) and other.fn == self.fn

    def __hash__(self):
        return hash(self.fn)


@jax.tree_util.register_pytree_node_class
class Identity(Transform):
    """The transform that returns the step unchanged."""

    def tree_flatten(self):
        return (), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls()

    def __call__(self, step):
        return step


@jax.tree_util.register_pytree_node_class
class Chain(Transform):
    """Transforms composed, the first applied innermost."""

    def __init__(self, transforms: tuple[Transform, ...]):
        self.transforms = tuple(transforms)

    def tree_flatten(self):
        return self.transforms, None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(tuple(children))

    def __call__(self, step):
        for t in self.transforms:
            step = t(step)
        return step


def identity() -> Transform:
    """The transform that returns the step unchanged."""
    return Identity()


def chain(*transforms) -> Transform:
    """Compose transforms, the first applied innermost (closest to the base step). A
    pytree: the attacks' arrays (masks, matrices) are its leaves."""
    out = []
    for i, t in enumerate(transforms):
        if not callable(t):
            raise TypeError(f"chain: argument {i} is not a step transform: {t!r}")
        out.append(t if isinstance(t, Transform) else FnTransform(t))
    return Chain(tuple(out))
