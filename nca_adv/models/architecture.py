"""Architectures as values: a small description of a CA rule from which its step is made.

A *model* here is a frozen description (channels, hidden size, perception fixed or learned,
fire rate, ...); its parameters are a separate pytree. ``make_step(model, params)`` gives
the step ``(x, key) -> x`` that rollouts, attacks and evaluations compose. The authors' two
architectures are the defaults (``GrowingCA()``, ``MnistCA()``), and ``infer(params)``
recognises any parameters of these two families by their shapes, so a bare params dict
still works wherever a model is expected.

:class:`CA` binds a model and its parameters into one pytree (the model is static aux data,
the parameters are leaves): pass it through ``jit``/``vmap`` like any params tree and call
``ca.step(x, key)``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import numbers
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeAlias

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from nca_adv.models import growing, mnist
from nca_adv.models.perceive import im2col3x3, sobel_perceive
from nca_adv.models.update import GrowingUpdate, MnistUpdate

Step = Callable[[jax.Array, jax.Array], jax.Array]
PERCEPTIONS = ("sobel", "learned")


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _rate(name: str, value: float, low: float = 0.0, high: float = 1.0) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not low <= float(value) <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")


def _as_float(model, *names: str) -> None:
    """Store numpy scalars (``np.float32(0.3)``) as Python floats: equal, hashable models."""
    import numpy as np

    for name in names:
        v = getattr(model, name)
        # np.float32(0.3) is 0.30000001192092896 as a double: keep the number written
        v = float(np.format_float_positional(v, unique=True)) if isinstance(v, np.floating) else v
        object.__setattr__(model, name, float(v))


@dataclasses.dataclass(frozen=True)
class GrowingCA:
    """The Growing CA family (Mordvintsev et al. 2020). State (..., H, W, ``channels``),
    RGBA first. ``perception``: ``sobel`` (fixed identity/sobel_x/sobel_y per channel,
    3C features, the article's) or ``learned`` (a learned 3x3 convolution into
    ``perception_features`` features). Update: Dense -> ReLU (``hidden``) -> Dense
    (zero-initialised); cells fire with probability ``fire_rate``; alive = max-pooled alpha
    > 0.1 before and after."""

    channels: int = growing.CHANNELS
    hidden: int = 128
    perception: str = "sobel"
    perception_features: int = 3 * growing.CHANNELS  # used by learned perception only
    fire_rate: float = growing.FIRE_RATE
    kind: ClassVar[str] = "growing"

    def __post_init__(self):
        _positive("channels", self.channels)
        if self.channels < 4:
            raise ValueError(f"a growing CA needs RGBA: channels >= 4, got {self.channels}")
        _positive("hidden", self.hidden)
        _positive("perception_features", self.perception_features)
        if self.perception not in PERCEPTIONS:
            raise ValueError(f"perception must be one of {PERCEPTIONS}, got {self.perception!r}")
        _rate("fire_rate", self.fire_rate)
        _as_float(self, "fire_rate")

    def update(self) -> GrowingUpdate:
        learned = self.perception_features if self.perception == "learned" else 0
        return GrowingUpdate(hidden=self.hidden, channels=self.channels, perception=learned)

    def in_features(self) -> int:
        return 9 * self.channels if self.perception == "learned" else 3 * self.channels

    def perceive(self) -> Callable[[jax.Array], jax.Array]:
        return im2col3x3 if self.perception == "learned" else sobel_perceive

    def init(self, key: jax.Array) -> dict:
        return _init(self.update(), key, self.in_features())

    def step(self, params, form: str | None = None) -> Step:
        """The step ``(x, key) -> x``; ``form``: ``living`` (the update on the cells that can
        reach the result), ``dense`` (every cell) or None/``auto`` (living on CPU); both
        give the same states (:mod:`nca_adv.models.living`). The parameters are checked
        against the architecture (one line naming what does not fit)."""
        check_params(self, params)
        return growing.GrowingStep(params, self.fire_rate, self.perceive(), self.update(), form)

    def check_state(self, x) -> None:
        """ValueError (one line) unless ``x`` is a float32 (..., H, W, channels) state."""
        growing.check_cells(x, self.channels)

    def seed(self, h: int, w: int) -> jax.Array:
        return growing.seed_state(h, w, self.channels)


@dataclasses.dataclass(frozen=True)
class MnistCA:
    """The Self-classifying MNIST family (Randazzo et al. 2020). State (..., H, W,
    ``channels``): channel 0 the immutable grey pixel, the last 10 the class scores. A
    learned 3x3 convolution into ``perception`` features, Dense ``hidden``, Dense to the
    ``channels - 1`` mutable channels (zero-initialised); N(0, ``noise_std``) residual
    noise; alive = grey > 0.1."""

    channels: int = mnist.CHANNELS
    perception: int = 80
    hidden: int = 80
    fire_rate: float = mnist.FIRE_RATE
    noise_std: float = mnist.NOISE_STD
    kind: ClassVar[str] = "mnist"

    def __post_init__(self):
        _positive("channels", self.channels)
        if self.channels < mnist.NUM_CLASSES + 1:
            raise ValueError(
                f"an MNIST CA needs grey + 10 class channels: channels >= 11, got {self.channels}"
            )
        _positive("perception", self.perception)
        _positive("hidden", self.hidden)
        _rate("fire_rate", self.fire_rate)
        _rate("noise_std", self.noise_std, 0.0, 10.0)
        _as_float(self, "fire_rate", "noise_std")

    def update(self) -> MnistUpdate:
        return MnistUpdate(channels=self.channels, perception=self.perception, hidden=self.hidden)

    def in_features(self) -> int:
        return 9 * self.channels

    def init(self, key: jax.Array) -> dict:
        return _init(self.update(), key, self.in_features())

    def step(self, params, per_sample_keys: bool = False) -> Step:
        """The whole-grid step on a batch (B, H, W, C); ``per_sample_keys``: ``key`` holds
        one key per sample."""
        check_params(self, params)
        return MnistStep(params, self, per_sample_keys)

    def check_state(self, x) -> None:
        """ValueError (one line) unless ``x`` is a float32 batch (B, H, W, channels)."""
        shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
        if shape is None or len(shape) != 4 or shape[-1] != self.channels:
            got = tuple(shape) if shape is not None else type(x).__name__
            raise ValueError(
                f"expected an MNIST CA state batch of shape (B, H, W, {self.channels}), got "
                f"{got} (one digit: x[None])"
            )
        if dtype != jnp.float32:
            raise ValueError(f"expected a float32 state, got {dtype}")

    def cell_step(self, params, index: mnist.CellIndex, per_sample_keys: bool = False) -> Step:
        """The same step computed on the alive cells of ``index`` only (bit for bit)."""
        check_params(self, params)
        u, rate, noise = self.update(), self.fire_rate, self.noise_std

        def step(x, key):
            self.check_state(x)
            return mnist.mnist_step_cells(params, x, index, key, rate, noise, per_sample_keys, u)

        return step

    def seed(self, images: jax.Array) -> jax.Array:
        return mnist.seed_states(images, self.channels)


Model = GrowingCA | MnistCA
MODELS: dict[str, type] = {"growing": GrowingCA, "mnist": MnistCA}


@jax.tree_util.register_pytree_node_class
class MnistStep:
    """An MNIST CA's whole-grid step as a value, ``(x, key) -> x`` on a batch (B, H, W, C):
    a pytree whose leaves are the parameters (the model is static)."""

    def __init__(self, params, model: MnistCA, per_sample_keys: bool = False):
        self.params, self.model, self.per_sample_keys = params, model, per_sample_keys

    def tree_flatten(self):
        return (self.params,), (self.model, self.per_sample_keys)

    @classmethod
    def tree_unflatten(cls, aux, children):
        step = object.__new__(cls)
        step.params, (step.model, step.per_sample_keys) = children[0], aux
        return step

    @property
    def channels(self) -> int:
        return self.model.channels

    def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
        m = self.model
        m.check_state(x)
        return mnist.mnist_step(
            self.params, x, key, m.fire_rate, m.noise_std, self.per_sample_keys, m.update()
        )


def _init(module: nn.Module, key: jax.Array, in_features: int) -> dict:
    return module.init(key, jnp.zeros((1, 1, in_features), jnp.float32))["params"]


def default(kind: str) -> Model:
    """The authors' architecture of ``kind`` (``growing`` or ``mnist``)."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(MODELS)}")
    return MODELS[kind]()


def make_step(model: Model, params) -> Step:
    """The CA step ``(x, key) -> x`` of ``model`` with ``params`` (for MNIST: the
    whole-grid step on a batch)."""
    return model.step(params)


# ----------------------------------------------------------------------------- descriptions
def to_dict(model: Model) -> dict:
    return {"kind": model.kind, **dataclasses.asdict(model)}


def to_json(model: Model) -> str:
    return json.dumps(to_dict(model), sort_keys=True)


def from_dict(d: dict) -> Model:
    """Rebuild a model from :func:`to_dict`'s output; unknown kinds or fields are refused."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in MODELS:
        raise ValueError(f"architecture: unknown kind {kind!r}; expected one of {sorted(MODELS)}")
    cls = MODELS[kind]
    known = {f.name for f in dataclasses.fields(cls)}
    extra = set(d) - known
    if extra:
        raise ValueError(f"architecture: unknown fields {sorted(extra)} for a {kind} model")
    return cls(**d)


def from_json(text: str) -> Model:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"architecture description is not JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError("architecture description must be a JSON object")
    return from_dict(d)


@functools.lru_cache(maxsize=64)
def _param_shapes(model: Model) -> dict:
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    return jax.tree.map(lambda a: tuple(a.shape), abstract)


def param_shapes(model: Model) -> dict:
    """The parameter tree of ``model`` with shapes as leaves (no compute)."""
    return _param_shapes(model)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_params(model: Model, params, source: str = "params") -> None:
    """Raise ValueError naming every missing, extra or misshaped parameter."""
    if not isinstance(params, dict):
        raise ValueError(f"{source}: parameters must be a dict, got {type(params).__name__}")
    want = _flat(param_shapes(model))
    have = {k: tuple(getattr(v, "shape", ())) for k, v in _flat(params).items()}
    problems = [f"missing {k}" for k in sorted(set(want) - set(have))]
    problems += [f"unexpected {k}" for k in sorted(set(have) - set(want))]
    problems += [
        f"{k} has shape {have[k]}, expected {want[k]}"
        for k in sorted(set(want) & set(have))
        if have[k] != want[k]
    ]
    if problems:
        raise ValueError(f"{source} do not fit {to_json(model)}: " + "; ".join(problems))


def infer(params, kind: str | None = None) -> Model:
    """The model of a params tree of either family, read from its shapes (fire rate and
    noise: the defaults, which shapes cannot show). ``kind`` restricts the family."""
    if not isinstance(params, dict):
        raise ValueError(f"parameters must be a dict, got {type(params).__name__}")
    try:
        d2 = params["dense2"]["kernel"].shape
        d1 = params["dense1"]["kernel"].shape
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not CA parameters (need dense1/dense2 kernels): {sorted(params)}") from e
    if "perceive_kernel" in params:
        pk = params["perceive_kernel"].shape  # (3, 3, C, P)
        if len(pk) == 4 and d2[-1] == pk[2] - 1:  # MNIST: the grey channel is immutable
            if kind == "growing":
                raise ValueError(
                    f"these are MNIST CA parameters ({pk[2]} channels, dense2 writes "
                    f"{d2[-1]}), not a growing CA's"
                )
            model = MnistCA(channels=pk[2], perception=pk[3], hidden=d1[-1])
            check_params(model, params)
            return model
    if kind in (None, "growing"):
        channels = d2[-1]
        if "perceive_kernel" in params:
            pk = params["perceive_kernel"].shape
            model = GrowingCA(channels, d1[-1], "learned", perception_features=pk[3])
        else:
            model = GrowingCA(channels, d1[-1], "sobel", perception_features=3 * channels)
        check_params(model, params)
        return model
    raise ValueError(f"these are growing CA parameters, not those of a {kind} CA")


# ----------------------------------------------------------------------------- bound models
@struct.dataclass
class CA:
    """A model bound to its parameters, as one pytree: ``ca.step(x, key)``. The model is
    static (part of the tree's structure), the parameters are its leaves."""

    model: Model = struct.field(pytree_node=False)
    params: Any

    def step(self, x: jax.Array, key: jax.Array) -> jax.Array:
        return self.model.step(self.params)(x, key)

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def channels(self) -> int:
        return self.model.channels

    def check(self) -> CA:
        """Raise ValueError (one line) unless the parameters fit the model; ``self``."""
        check_params(self.model, self.params)
        return self


def bind(obj, kind: str | None = None) -> CA:
    """A :class:`CA` from a CA, or from a bare params dict (its model inferred)."""
    if isinstance(obj, CA):
        if kind is not None and obj.kind != kind:
            raise ValueError(f"expected a {kind} CA, got a {obj.kind} one")
        return obj
    return CA(infer(obj, kind), obj)


@struct.dataclass
class StepFn:
    """Any step function ``(x, key) -> x`` (a composed attack, a rule of your own) as a
    pytree without leaves: it passes through ``jit`` as static structure, so its
    parameters are baked in as constants. Prefer :class:`CA` for a model's own step."""

    fn: Callable = struct.field(pytree_node=False)

    def step(self, x: jax.Array, key: jax.Array) -> jax.Array:
        return self.fn(x, key)

    def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
        return self.fn(x, key)

    kind = None


@struct.dataclass
class PytreeStep:
    """A step that is itself a pytree (a model's :class:`~nca_adv.models.growing.GrowingStep`
    or :class:`MnistStep`, a step made by the attack transforms): its arrays stay leaves,
    so a jitted evaluation traces them (a new mask or matrix of the same shapes does not
    recompile)."""

    fn: Any

    def step(self, x: jax.Array, key: jax.Array) -> jax.Array:
        return self.fn(x, key)

    @property
    def kind(self) -> str | None:
        return getattr(self.fn, "kind", None)

    @property
    def channels(self) -> int | None:
        return getattr(self.fn, "channels", None)


ModelLike: TypeAlias = CA | Mapping[str, Any] | Step
"""What the evaluations and trainers accept as a model: a :class:`CA` (a model bound to
its parameters, fire rate included), a bare params dict (the architecture read from its
shapes, the default fire rate) or any step function ``(x, key) -> x`` (a model's step, a
step made by the attack transforms, a rule of your own). Exported as ``nca_adv.Model``."""


def is_pytree_step(obj) -> bool:
    """Whether ``obj`` is a callable registered as a pytree (its arrays can be traced)."""
    return callable(obj) and not jax.tree_util.treedef_is_leaf(jax.tree.structure(obj))


def as_stepper(obj: ModelLike, kind: str | None = None) -> CA | StepFn | PytreeStep:
    """What the evaluations accept as a model: a :class:`CA`, a bare params dict (its
    model inferred from the shapes) or any step function ``(x, key) -> x`` (pytree steps
    keep their arrays as traced leaves)."""
    if isinstance(obj, CA | StepFn | PytreeStep):
        if obj.kind is not None and kind is not None and obj.kind != kind:
            raise ValueError(f"expected a {kind} CA, got a {obj.kind} one")
        return obj
    if is_pytree_step(obj):
        if isinstance(obj, MnistStep) and kind == "growing":
            raise ValueError("expected a growing CA step, got an MNIST CA step")
        return PytreeStep(obj)
    if callable(obj):
        return StepFn(obj)
    return bind(obj, kind)


def state_channels(obj) -> int | None:
    """The state channels of a model in any form (None: a plain step function)."""
    if isinstance(obj, CA):
        return obj.model.channels
    return getattr(obj, "channels", None)
