"""Global state perturbations (Randazzo et al. 2021, second attack): one symmetric 16x16
matrix A multiplies the state of every living cell before each step of a frozen CA.

Parameterisation: A = (M + Mᵀ) / 2 with M initialised to the identity, so A is symmetric
for any M and starts as I. (The original built A from M's upper triangle,
``triu(M) + triu(M)ᵀ - diag(M)``: the same set of matrices, another gradient geometry.)

The perturbed step, exactly as the original: ``lm = alive(x); x = clip(x @ A, -3, 3) * lm;
x = base_step(x)``. The clip bites even for A = I: the lizards' hidden channels reach
about 12, so "on" with A = I is not the identity; a scheduled rollout
(:mod:`nca_adv.evaluation.perturbation_eval`) therefore skips the perturbation on "off" steps instead
of multiplying by I.

Matrices: a shipped name (``nca_adv/assets/perturbations/<name>.npy``), a ``.npy`` path, or
a mix ``"tail=1,leg=0.5"`` meaning ``sum_i k_i A_i + (1 - sum_i k_i) I``. Schedules:
``"on:0-500,off:500-1000,on:1000-"``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nca_adv.attacks import transforms
from nca_adv.models import growing
from nca_adv.models.masks import alive_mask

CHANNELS = growing.CHANNELS
CLIP = 3.0
SHIPPED_NAMES = ("tail", "leg", "arm", "head", "red", "blue")
SYMMETRY_TOLERANCE = 1e-5

Step = Callable[[jax.Array, jax.Array], jax.Array]


# ----------------------------------------------------------------------------- the step
def init_matrix(channels: int = CHANNELS) -> jax.Array:
    """The trainable M at the start: the identity (so A = I)."""
    return jnp.eye(channels, dtype=jnp.float32)


def symmetric(m: jax.Array) -> jax.Array:
    """A = (M + Mᵀ) / 2 over the last two axes: symmetric for any M."""
    return (m + jnp.swapaxes(m, -1, -2)) / 2


def perturb_state(
    x: jax.Array,
    a: jax.Array,
    alive: Callable[[jax.Array], jax.Array] = alive_mask,
    clip: float | None = CLIP,
) -> jax.Array:
    """``clip(x @ A, -clip, clip) * alive(x)`` for a state batch x (..., H, W, C)."""
    lm = alive(x)
    # HIGHEST: GPUs otherwise round float32 matmuls to TF32, and x @ I must stay exact.
    y = jnp.matmul(x, a, precision=jax.lax.Precision.HIGHEST)
    if clip is not None:
        y = jnp.clip(y, -clip, clip)
    return y * lm


def perturb(
    a: jax.Array,
    alive: Callable[[jax.Array], jax.Array] = alive_mask,
    clip: float | None = CLIP,
) -> Perturb:
    """The attack as a step transform: ``perturb(A)(base_step)`` perturbs, then steps.

    Differentiable in ``a`` (train M through ``perturb(symmetric(M))``). A pytree
    (:class:`Perturb`): ``a`` is a leaf, so a jitted function of the perturbed step
    compiles once for every matrix of one shape. ``a`` must be a square (C, C) matrix for
    a state of C channels; a concrete matrix holding NaN or infinities is refused.
    """
    if not hasattr(a, "shape"):
        a = jnp.asarray(a, jnp.float32)
    shape = tuple(a.shape)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"perturbation matrix must be square (C, C), got shape {shape}")
    if not isinstance(a, jax.core.Tracer) and not bool(np.all(np.isfinite(np.asarray(a)))):
        raise ValueError("perturbation matrix holds NaN or infinite values")
    return Perturb(a, alive, clip)


@jax.tree_util.register_pytree_node_class
class Perturb(transforms.Transform):
    """:func:`perturb` as a value: the matrix ``a`` is its leaf; ``alive`` and ``clip``
    are static."""

    def __init__(self, a, alive=alive_mask, clip: float | None = CLIP):
        self.a, self.alive, self.clip = a, alive, clip

    def tree_flatten(self):
        return (self.a,), (self.alive, self.clip)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], *aux)

    def apply(self, base_step: Step, x: jax.Array, key: jax.Array) -> jax.Array:
        c = self.a.shape[-1]
        if x.shape[-1] != c:
            raise ValueError(
                f"a {c}x{c} perturbation matrix cannot act on a state of {x.shape[-1]} "
                f"channels (shape {tuple(x.shape)})"
            )
        return base_step(perturb_state(x, self.a, self.alive, self.clip), key)


# ----------------------------------------------------------------------------- matrices
def check_matrix(a, source: str, channels: int = CHANNELS) -> np.ndarray:
    """Raise ValueError naming ``source`` unless ``a`` is a finite symmetric
    (channels, channels) matrix; return it as float32."""
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{source}: expected a square matrix, got shape {a.shape}")
    if a.shape != (channels, channels):
        raise ValueError(f"{source}: expected a {channels}x{channels} matrix, got {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError(f"{source}: expected a real matrix, got dtype {a.dtype}")
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{source}: holds NaN or infinite values")
    asym = float(np.max(np.abs(a - a.T)))
    if asym > SYMMETRY_TOLERANCE * max(1.0, float(np.max(np.abs(a)))):
        raise ValueError(f"{source}: not symmetric (max |A - Aᵀ| = {asym:.3g})")
    return a


def shipped_dir() -> Path:
    return Path(str(resources.files("nca_adv") / "assets" / "perturbations"))


def shipped_perturbations() -> dict[str, Path]:
    """Shipped perturbation name -> ``.npy`` file in ``nca_adv/assets/perturbations``."""
    folder = shipped_dir()
    return {p.stem: p for p in sorted(folder.glob("*.npy"))} if folder.is_dir() else {}


def load_matrix(spec: str, channels: int = CHANNELS) -> np.ndarray:
    """A shipped name (``tail``, ``leg``, ...) or a ``.npy`` path -> checked (C, C) float32
    (``channels`` C: 16, the lizard's; a model of another state size takes its own).

    Files are loaded as they are (the authors' ``*_sym_t.npy`` are already symmetric).
    """
    shipped = shipped_perturbations()
    if spec in shipped:
        path = shipped[spec]
    elif spec.lower().endswith(".npy") or os.sep in spec:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"perturbation file {path} does not exist")
    else:
        raise ValueError(
            f"unknown perturbation {spec!r}; shipped: {sorted(shipped)} "
            "(or give a path to a .npy 16x16 symmetric matrix)"
        )
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{path} is not a readable .npy array: {e}") from e
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{path} holds an archive, not one .npy array")
    return check_matrix(a, str(path), channels)


def save_matrix(path: str | os.PathLike, a) -> Path:
    """Write a checked symmetric (16, 16) float32 matrix as ``.npy`` (temp file + rename),
    e.g. ``save_matrix(shipped_dir() / "tail.npy", symmetric(M))`` to ship a trained one."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"{path}: a perturbation matrix is saved as .npy")
    a = check_matrix(a, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, a, allow_pickle=False)
    os.replace(tmp, path)
    return path


def interpolate(a: jax.Array, k) -> jax.Array:
    """A_k = k A + (1 - k) I; ``k`` may be a scalar or an array (-> (..., C, C))."""
    k = jnp.asarray(k, jnp.float32)[..., None, None]
    eye = jnp.eye(a.shape[-1], dtype=jnp.float32)
    return k * a + (1 - k) * eye


def mix(terms: list[tuple[float, np.ndarray]]) -> np.ndarray:
    """sum_i k_i A_i + (1 - sum_i k_i) I."""
    if not terms:
        raise ValueError("a mix needs at least one term")
    sizes = {np.shape(a) for _, a in terms}
    if len(sizes) > 1:
        raise ValueError(f"a mix needs matrices of one size, got {sorted(sizes)}")
    eye = np.eye(terms[0][1].shape[-1], dtype=np.float32)
    total = sum(float(k) for k, _ in terms)
    out = (1.0 - total) * eye
    for k, a in terms:
        out = out + np.float32(k) * a
    return out.astype(np.float32)


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def parse_mix_terms(spec: str) -> list[tuple[str, float]]:
    """``"tail=1,leg=0.5,path/x.npy"`` -> [(spec, k), ...]; a bare term means k = 1."""
    if not spec or not spec.strip():
        raise ValueError("empty perturbation mix; expected e.g. 'tail=1,leg=1'")
    terms, seen = [], set()
    for raw in spec.split(","):
        term = raw.strip()
        if not term:
            raise ValueError(f"perturbation mix {spec!r} has an empty term")
        name, k = term, "1"
        if "=" in term:
            name, k = (s.strip() for s in term.rsplit("=", 1))
        if not name:
            raise ValueError(f"perturbation mix {spec!r}: term {term!r} has no name")
        if not _NUMBER.match(k):
            raise ValueError(f"perturbation mix {spec!r}: weight {k!r} of {name!r} is not a number")
        if name in seen:
            raise ValueError(f"perturbation mix {spec!r} names {name!r} twice")
        seen.add(name)
        terms.append((name, float(k)))
    return terms


def load_perturbation(spec: str, channels: int = CHANNELS) -> np.ndarray:
    """A ``--perturbation`` SPEC: a shipped name, a ``.npy`` path or a mix
    (``tail=1,leg=1``) -> its (C, C) float32 matrix (C = ``channels``, 16 by default)."""
    return parse_mix(spec, channels)


def parse_mix(spec: str, channels: int = CHANNELS) -> np.ndarray:
    """A mix spec (names and ``.npy`` paths, see :func:`parse_mix_terms`) -> its matrix
    ``sum_i k_i A_i + (1 - sum_i k_i) I``. A single bare name is that matrix."""
    return mix([(k, load_matrix(name, channels)) for name, k in parse_mix_terms(spec)])


# ----------------------------------------------------------------------------- schedules
_PHASE = re.compile(r"^(on|off):(\d+)-(\d*)$")


def parse_phases(spec: str | None, total_steps: int) -> list[tuple[bool, int, int]]:
    """``"on:0-500,off:500-1000,on:1000-"`` -> [(on, start, end), ...] covering
    [0, total_steps) without gaps or overlaps; ``None``/empty: on throughout."""
    if total_steps < 1:
        raise ValueError(f"a schedule needs at least one step, got {total_steps}")
    if spec is None or not spec.strip():
        return [(True, 0, total_steps)]
    phases, expected = [], 0
    for raw in spec.split(","):
        m = _PHASE.match(raw.strip())
        if not m:
            raise ValueError(
                f"schedule {spec!r}: bad phase {raw.strip()!r}; expected on:START-END or "
                "off:START-END (END may be left out on the last phase)"
            )
        start = int(m.group(2))
        end = int(m.group(3)) if m.group(3) else total_steps
        if start != expected:
            what = "overlaps the previous phase" if start < expected else "leaves a gap"
            raise ValueError(
                f"schedule {spec!r}: phase {raw.strip()!r} {what} (expected start {expected})"
            )
        if end <= start:
            raise ValueError(f"schedule {spec!r}: phase {raw.strip()!r} is empty or reversed")
        if end > total_steps:
            raise ValueError(
                f"schedule {spec!r}: phase {raw.strip()!r} ends after the rollout's {total_steps} steps"
            )
        phases.append((m.group(1) == "on", start, end))
        expected = end
    if expected != total_steps:
        raise ValueError(
            f"schedule {spec!r} covers steps 0-{expected} but the rollout has {total_steps} steps"
        )
    return phases


def parse_schedule(spec: str | None, total_steps: int) -> np.ndarray:
    """A schedule spec (see :func:`parse_phases`) -> per-step bool array (total_steps,)."""
    on = np.zeros(total_steps, bool)
    for is_on, start, end in parse_phases(spec, total_steps):
        on[start:end] = is_on
    return on
