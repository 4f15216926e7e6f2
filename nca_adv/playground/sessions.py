"""One browser tab's playground: its state on the device, its actions, its frames.

Plain classes, no web code: :class:`MnistSession` (draw digits, place adversarial cells)
and :class:`LizardSession` (grow, cut, perturb, paint adversaries). ``handle`` takes the
page's raw JSON text and either applies it or returns an error and changes nothing;
``tick`` advances a playing session by its speed; ``frame`` packs what the page shows.

The CA is the library's own: ``mnist.mnist_step`` and ``growing.growing_step``, mixed by
``adversaries.with_adversaries`` and perturbed by ``perturbation.perturb``, with the keys
the evaluations use, so a session replays ``eval_mnist`` / ``eval_growing`` exactly:

- MNIST: step i of the digit with stream s draws ``fold_in(fold_in(run_key, i), s)`` (the
  per-digit keys of ``mnist.swap_rollout`` and ``adversary_eval.mnist_adversary_rollout``).
  ``run_key`` defaults to ``eval_mnist``'s (``split(PRNGKey(seed))[0]``); ``load_digit``
  sets s to the digit's index in the test set, ``clear`` to 0.
- Lizard: step i draws ``fold_in(run_key, i)``; ``run_key`` defaults to the key of
  ``eval_growing --perturbation``'s first run (``split(split(PRNGKey(seed))[1], 1)[0]``).

Each session shape compiles one "n steps" program (``lax.fori_loop`` over a traced n,
``lax.switch`` over the plain / attacked / perturbed steps), shared by all sessions.
"""

from __future__ import annotations

import json
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nca_adv.attacks import adversaries, perturbation
from nca_adv.evaluation.adversary_eval import vote_counts
from nca_adv.io import data
from nca_adv.media import video
from nca_adv.models import architecture, growing, mnist
from nca_adv.models.masks import alive_mask
from nca_adv.playground import protocol
from nca_adv.playground.models import COMPLETE, LizardModels, MnistModels
from nca_adv.playground.protocol import ActionError, boolean, cells, choice, integer, number

# The vote colours, each at least 3:1 against the page's backgrounds (white and #fafafa,
# WCAG's contrast for graphics; ``contrast``): "article" is the article's class colours
# (the project's tab10 family, ``video.CLASS_COLOURS``) with the pale ones (1, 6, 8, 9)
# darkened in their own hue; "colorblind" is Paul Tol's "muted" scheme, designed to stay
# distinct for colour-blind readers, with its pale ones darkened the same way, its sand
# made ochre (apart from olive) and its pale grey a mid grey.
PALETTES = {
    "article": np.array(
        [
            [31, 119, 180],
            [222, 110, 12],
            [44, 160, 44],
            [214, 39, 40],
            [148, 103, 189],
            [140, 86, 75],
            [204, 107, 175],
            [127, 127, 127],
            [146, 146, 26],
            [19, 156, 170],
        ],
        np.uint8,
    ),
    "colorblind": np.array(
        [
            [51, 34, 136],
            [98, 147, 171],
            [63, 156, 141],
            [17, 119, 51],
            [145, 145, 48],
            [160, 115, 20],
            [204, 102, 119],
            [136, 34, 85],
            [170, 68, 153],
            [110, 110, 110],
        ],
        np.uint8,
    ),
}
MIN_CONTRAST = 3.0
MAX_SPEED = 64  # steps per frame
MAX_STEPS_PER_ACTION = 500
CHUNK_STEPS = 32  # the most steps one job on a worker thread runs (a long step: several)
K_RANGE = (-1.0, 2.0)
DEFAULT_CUT_RADIUS = 8
NO_ADVERSARY = "none"  # the lizard brush that erases adversaries


def relative_luminance(rgb) -> float:
    """WCAG 2 relative luminance of an sRGB colour (0-255 per channel)."""
    c = np.asarray(rgb, np.float64) / 255.0
    lin = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(lin @ np.array([0.2126, 0.7152, 0.0722]))


def contrast(a, b) -> float:
    """WCAG 2 contrast ratio of two sRGB colours (1 to 21)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def pack_frame(header: dict, *payload: bytes) -> bytes:
    """A binary frame: uint32 little-endian length of the JSON header, the header, then
    the raw payload (RGBA bytes, then one byte per cell marking adversaries)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(head)) + head + b"".join(payload)


def unpack_frame(data: bytes) -> tuple[dict, bytes]:
    """The inverse of :func:`pack_frame`: (header, payload)."""
    (n,) = struct.unpack_from("<I", data)
    return json.loads(data[4 : 4 + n]), data[4 + n :]


class Session:
    """What both playgrounds share: play / pause / step / speed / palette, the action
    number echoed in frames (``ack``), a lock (the server calls in from worker threads).

    A session plays (``running``) only while it is playing, its page is visible
    (``visible`` action) and the server has not marked it ``unwatched``."""

    kind = ""

    def __init__(self, speed: int = 1):
        self._lock = threading.RLock()
        self.playing = False
        self.steps_per_frame = speed
        self.palette = "article"
        self.ack: int | None = None
        self.frames = 0
        self.step = 0
        self.pending_steps = 0  # of a "step" action, run in chunks by the server
        self.hidden = False
        self.unwatched = False
        self._schemas = {
            "play": {"on": boolean()},
            "visible": {"on": boolean()},
            "step": {"n": integer(1, MAX_STEPS_PER_ACTION)},
            "speed": {"steps_per_frame": integer(1, MAX_SPEED)},
            "palette": {"name": choice(tuple(PALETTES))},
            **self._kind_schemas(),
        }

    # ------------------------------------------------------------------ subclass hooks
    def _kind_schemas(self) -> dict:
        raise NotImplementedError

    def _apply(self, action: dict) -> None:
        raise NotImplementedError

    def _advance(self, n: int) -> None:
        raise NotImplementedError

    def _view(self) -> tuple[dict, bytes, bytes]:
        raise NotImplementedError

    def _config(self) -> dict:
        raise NotImplementedError

    # ------------------------------------------------------------------ public
    @property
    def running(self) -> bool:
        return self.playing and not self.hidden and not self.unwatched

    def handle(self, raw: str | bytes, defer: bool = False) -> dict | None:
        """Apply one raw message; None on success, else ``{"type": "error", "message"}``
        and the session is unchanged. With ``defer`` a ``step`` action's steps are left
        in ``pending_steps`` for :meth:`run_pending` (the server runs them in chunks)."""
        try:
            action = protocol.parse(raw, self._schemas)
            with self._lock:
                self._dispatch(action)
                if "seq" in action:
                    self.ack = action["seq"]
        except ActionError as e:
            return {"type": "error", "message": str(e)}
        if not defer:
            self.run_pending()
        return None

    def run_pending(self, most: int | None = None) -> int:
        """Run up to ``most`` (None: all) of the pending steps; how many are left."""
        with self._lock:
            n = self.pending_steps if most is None else min(most, self.pending_steps)
            if n > 0:
                self._advance(n)
                jax.block_until_ready(self.x)  # the work is done on this thread, not queued
                self.pending_steps -= n
            return self.pending_steps

    def _dispatch(self, action: dict) -> None:
        kind = action["type"]
        if kind == "play":
            self.playing = action["on"]
        elif kind == "visible":
            self.hidden = not action["on"]
        elif kind == "step":
            self.playing = False
            self.pending_steps = action["n"]
        elif kind == "speed":
            self.steps_per_frame = action["steps_per_frame"]
        elif kind == "palette":
            self.palette = action["name"]
        else:
            self._apply(action)

    def tick(self) -> bool:
        """Advance ``steps_per_frame`` steps if running; whether it did."""
        with self._lock:
            if self.running:
                self._advance(self.steps_per_frame)
                jax.block_until_ready(self.x)
            return self.running

    def frame(self) -> bytes:
        """The packed frame (:func:`pack_frame`) of the current state."""
        with self._lock:
            header, rgba, marks = self._view()
            self.frames += 1
            header.update(
                kind=self.kind,
                frame=self.frames,
                step=self.step,
                ack=self.ack,
                playing=self.playing,
                running=self.running,
                speed=self.steps_per_frame,
                palette=self.palette,
            )
            return pack_frame(header, rgba, marks)

    def hello(self) -> dict:
        """The page's first message: what this server offers (names, ranges, sizes)."""
        return {
            "type": "hello",
            "kind": self.kind,
            "palettes": {k: v.tolist() for k, v in PALETTES.items()},
            "max_speed": MAX_SPEED,
            "max_steps": MAX_STEPS_PER_ACTION,
            "max_message_bytes": protocol.MAX_MESSAGE_BYTES,
            **self._config(),
        }


# ============================================================================== MNIST
@jax.jit
def _mnist_advance(base, adv, x, mask, run_key, stream, start, n, branch):
    """n steps (traced) from step ``start`` of the bound CAs (``architecture.CA``); branch
    0 the base CA, 1 the mixed step."""

    def ca_step(ca):  # the whole-grid step, one key per digit (here one digit)
        return ca.model.step(ca.params, per_sample_keys=True)

    plain = ca_step(base)
    mixed = adversaries.with_adversaries(ca_step(adv), mask)(plain)

    def body(i, x):
        keys = jax.random.fold_in(jax.random.fold_in(run_key, start + i), stream)[None]
        return jax.lax.switch(branch, (plain, mixed), x, keys)

    return jax.lax.fori_loop(0, n, body, x)


@jax.jit
def _mnist_view(x):
    return mnist.votes(x[0]).astype(jnp.int8), vote_counts(x[0])


_mnist_mutate = jax.jit(mnist.mutate)


class MnistSession(Session):
    """The MNIST playground (28x28): draw and erase digit pixels, load test digits, place
    adversarial cells one by one, watch every living cell's vote."""

    kind = "mnist"
    size = 28

    def __init__(
        self, models: MnistModels, seed: int = 0, run_key: jax.Array | None = None, speed=2
    ):
        self.models = models
        self._base = architecture.bind(models.base, "mnist")
        self._adv = architecture.bind(
            models.adversary if models.adversary is not None else models.base, "mnist"
        )
        k_run, k_pick = jax.random.split(jax.random.PRNGKey(seed))
        self.run_key = k_run if run_key is None else jnp.asarray(run_key)
        self.pick_key, self.picks = k_pick, 0
        super().__init__(speed)
        self._reset(np.zeros((self.size, self.size), np.float32), stream=0, label=None)

    def _kind_schemas(self) -> dict:
        s = self.size
        return {
            "paint": {"cells": cells(s, s, with_value=True), "blend": choice(("set", "max"))},
            "adversary": {"cells": cells(s, s)},
            "load_digit": {"digit": integer(0, 9)},
            "clear": {},
            "remove_adversaries": {},
        }

    def _config(self) -> dict:
        return {
            "size": self.size,
            "adversary": self.models.adversary is not None,
        }

    # ------------------------------------------------------------------ state
    def _reset(self, image: np.ndarray, stream: int, label: int | None) -> None:
        self.image = np.asarray(image, np.float32).copy()
        self.adversary = np.zeros(self.image.shape, bool)
        self.stream, self.step, self.label = int(stream), 0, label
        self.x = mnist.seed_states(jnp.asarray(self.image)[None])
        self._mask = jnp.zeros((1, *self.image.shape, 1), jnp.float32)

    def _set_image(self, image: np.ndarray) -> None:
        """Swap the grey channel: cells keep their state where they stay alive, new cells
        start empty, erased cells die (``mnist.mutate``); dead cells hold no adversary."""
        self.image = image
        self.adversary &= image > mnist.ALIVE_THRESHOLD
        self.x = _mnist_mutate(self.x, jnp.asarray(image)[None])
        self._sync_mask()

    def _sync_mask(self) -> None:
        self._mask = jnp.asarray(self.adversary[None, ..., None], jnp.float32)

    @property
    def alive(self) -> np.ndarray:
        return self.image > mnist.ALIVE_THRESHOLD

    # ------------------------------------------------------------------ actions
    def _apply(self, action: dict) -> None:
        kind = action["type"]
        if kind == "paint":
            image = self.image.copy()
            for r, c, v in action["cells"]:
                image[r, c] = v if action["blend"] == "set" else max(image[r, c], v)
            self._set_image(image)
        elif kind == "adversary":
            if self.models.adversary is None:
                raise ActionError("this server runs no MNIST adversary (--mnist_adversary)")
            image = self.image.copy()
            for r, c in action["cells"]:
                if image[r, c] <= mnist.ALIVE_THRESHOLD:
                    image[r, c] = 1.0  # an adversarial cell drawn on empty ground is born
            self.image = image
            self.x = _mnist_mutate(self.x, jnp.asarray(image)[None])
            for r, c in action["cells"]:
                self.adversary[r, c] = True
            self._sync_mask()
        elif kind == "load_digit":
            self.load_digit(action["digit"])
        elif kind == "clear":
            self._reset(np.zeros_like(self.image), stream=0, label=None)
        elif kind == "remove_adversaries":
            self.adversary[:] = False
            self._sync_mask()

    def load_digit(self, digit: int) -> int:
        """A random test digit of class ``digit`` (the n-th pick draws ``fold_in(pick_key,
        n)``) on a fresh grid; returns its test index, which becomes the stream."""
        pool = np.flatnonzero(self.models.labels == digit)
        if not len(pool):
            raise ActionError(f"the test set holds no digit {digit}")
        pick = jax.random.randint(jax.random.fold_in(self.pick_key, self.picks), (), 0, len(pool))
        self.picks += 1
        index = int(pool[int(pick)])
        self._reset(data.to_float(self.models.images[index]), stream=index, label=digit)
        return index

    def _advance(self, n: int) -> None:
        use_adversary = self.models.adversary is not None and bool(self.adversary.any())
        self.x = _mnist_advance(
            self._base,
            self._adv,
            self.x,
            self._mask,
            self.run_key,
            jnp.int32(self.stream),
            jnp.int32(self.step),
            jnp.int32(n),
            jnp.int32(use_adversary),
        )
        self.step += n

    # ------------------------------------------------------------------ view
    def counts(self) -> np.ndarray:
        """(10,) living cells voting for each class."""
        return np.asarray(_mnist_view(self.x)[1])

    def _view(self) -> tuple[dict, bytes, bytes]:
        votes, counts = (np.asarray(a) for a in _mnist_view(self.x))
        alive = self.alive
        colour = PALETTES[self.palette][votes.astype(np.int64)].astype(np.float32)
        grey = self.image[..., None]
        rgb = np.where(alive[..., None], 255.0 - grey * (255.0 - colour), 255.0)
        rgba = np.concatenate([rgb, np.full(alive.shape + (1,), 255.0)], -1)
        total = int(counts.sum())
        header = {
            "height": self.size,
            "width": self.size,
            "alive": total,
            "counts": counts.tolist(),
            "majority": int(counts.argmax()) if total else None,
            "label": self.label,
            "adversaries": int((self.adversary & alive).sum()),
        }
        marks = (self.adversary & alive).astype(np.uint8)
        return header, rgba.astype(np.uint8).tobytes(), marks.tobytes()


# ============================================================================== lizard
def _lizard_steps(base, advs, masks, a):
    """The four steps a lizard session switches between (``architecture.CA`` models):
    plain, attacked (every adversary on its mask), perturbed, perturbed and attacked."""

    def ca_step(ca):
        return architecture.make_step(ca.model, ca.params)

    plain = ca_step(base)
    attacked = plain
    for adv, mask in zip(advs, masks):
        attacked = adversaries.with_adversaries(ca_step(adv), mask)(attacked)
    perturb = perturbation.perturb(a)
    return plain, attacked, perturb(plain), perturb(attacked)


@jax.jit
def _lizard_advance(base, advs, masks, a, x, run_key, start, n, branch):
    steps = _lizard_steps(base, advs, masks, a)

    def body(i, x):
        return jax.lax.switch(branch, steps, x, jax.random.fold_in(run_key, start + i))

    return jax.lax.fori_loop(0, n, body, x)


@jax.jit
def _lizard_view(x, target, complete):
    return (
        x[..., :4],
        growing.growing_loss(x, target),
        growing.growing_loss(x, complete),
        jnp.sum(alive_mask(x)),
    )


class LizardSession(Session):
    """The lizard playground (72x72): grow from the seed, cut circles, mix the
    perturbations with one k per matrix, paint growing adversaries, pick a target."""

    kind = "lizard"

    def __init__(
        self, models: LizardModels, seed: int = 0, run_key: jax.Array | None = None, speed=4
    ):
        self.models = models
        self.h, self.w = models.targets[COMPLETE].shape[:2]
        _, k_run = jax.random.split(jax.random.PRNGKey(seed))
        self.run_key = jax.random.split(k_run, 1)[0] if run_key is None else jnp.asarray(run_key)
        self.adversary_names = list(models.adversaries)
        self.ks = {name: 0.0 for name in models.perturbations}
        self.perturb_on = False
        self.target = "lizard_no_tail" if "lizard_no_tail" in models.targets else COMPLETE
        self._base = architecture.bind(models.base, "growing")
        self._advs = tuple(architecture.bind(a, "growing") for a in models.adversaries.values())
        self._complete = jnp.asarray(models.targets[COMPLETE])
        self._target = jnp.asarray(models.targets[self.target])
        self._set_matrix()
        super().__init__(speed)
        self.reset()

    def _kind_schemas(self) -> dict:
        h, w = self.h, self.w
        return {
            "cut": {
                "row": integer(0, h - 1),
                "col": integer(0, w - 1),
                "radius": integer(1, max(h, w) // 2),
            },
            "k": {"name": choice(tuple(self.ks)), "value": number(*K_RANGE)},
            "perturb": {"on": boolean()},
            "adversary": {
                "name": choice((*self.adversary_names, NO_ADVERSARY)),
                "cells": cells(h, w),
            },
            "remove_adversaries": {},
            "target": {"name": choice(tuple(self.models.targets))},
            "reset": {},
        }

    def _config(self) -> dict:
        return {
            "height": self.h,
            "width": self.w,
            "perturbations": list(self.ks),
            "k_range": list(K_RANGE),
            "adversaries": self.adversary_names,
            "targets": list(self.models.targets),
            "complete": COMPLETE,
            "target": self.target,
            "cut_radius": DEFAULT_CUT_RADIUS,
            "notes": self.models.notes,
        }

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """The seed again, step 0, no adversary (k, switch and target are kept)."""
        self.x = growing.seed_state(self.h, self.w)
        self.step = 0
        self.owner = np.zeros((self.h, self.w), np.int8)  # 0: none, j + 1: adversary j
        self._sync_masks()

    def _sync_masks(self) -> None:
        n = len(self._advs)
        onehot = self.owner[None] == np.arange(1, n + 1)[:, None, None]
        self._masks = jnp.asarray(onehot[..., None], jnp.float32)  # (n, H, W, 1)

    def _set_matrix(self) -> None:
        """A = I + sum_i k_i (A_i - I) (``perturbation.mix`` of the non-zero terms)."""
        terms = [(k, self.models.perturbations[n]) for n, k in self.ks.items() if k != 0.0]
        self.matrix = (
            perturbation.mix(terms) if terms else np.eye(growing.CHANNELS, dtype=np.float32)
        )
        self._matrix = jnp.asarray(self.matrix)

    # ------------------------------------------------------------------ actions
    def _apply(self, action: dict) -> None:
        kind = action["type"]
        if kind == "cut":
            rows = np.arange(self.h)[:, None] - action["row"]
            cols = np.arange(self.w)[None, :] - action["col"]
            keep = (rows * rows + cols * cols) >= action["radius"] ** 2
            self.x = self.x * jnp.asarray(keep[..., None], jnp.float32)
        elif kind == "k":
            self.ks[action["name"]] = action["value"]
            self._set_matrix()
        elif kind == "perturb":
            self.perturb_on = action["on"]
        elif kind == "adversary":
            name = action["name"]
            value = 0 if name == NO_ADVERSARY else self.adversary_names.index(name) + 1
            for r, c in action["cells"]:
                self.owner[r, c] = value
            self._sync_masks()
        elif kind == "remove_adversaries":
            self.owner[:] = 0
            self._sync_masks()
        elif kind == "target":
            self.target = action["name"]
            self._target = jnp.asarray(self.models.targets[self.target])
        elif kind == "reset":
            self.reset()

    def set_ks(self, **ks: float) -> None:
        """Set several sliders at once (the others keep their value)."""
        with self._lock:
            for name, value in ks.items():
                if name not in self.ks:
                    raise ActionError(f"unknown perturbation {name!r}; known: {list(self.ks)}")
                self.ks[name] = float(value)
            self._set_matrix()

    def _advance(self, n: int) -> None:
        branch = 2 * int(self.perturb_on) + int(bool(self.owner.any()))
        self.x = _lizard_advance(
            self._base,
            self._advs,
            self._masks,
            self._matrix,
            self.x,
            self.run_key,
            jnp.int32(self.step),
            jnp.int32(n),
            jnp.int32(branch),
        )
        self.step += n

    # ------------------------------------------------------------------ view
    def losses(self) -> tuple[float, float]:
        """RGBA MSE to the chosen target and to the complete lizard."""
        _, lt, lc, _ = _lizard_view(self.x, self._target, self._complete)
        return float(lt), float(lc)

    def _view(self) -> tuple[dict, bytes, bytes]:
        rgba, lt, lc, alive = jax.device_get(_lizard_view(self.x, self._target, self._complete))
        rgb = video.to_uint8(video.rgba_to_rgb(rgba))
        rgba8 = np.concatenate([rgb, np.full((self.h, self.w, 1), 255, np.uint8)], -1)
        header: dict[str, Any] = {
            "height": self.h,
            "width": self.w,
            "target": self.target,
            "loss_target": float(lt),
            "loss_complete": float(lc),
            "alive": int(alive),
            "perturb_on": self.perturb_on,
            "ks": self.ks,
            "adversary_cells": {
                name: int((self.owner == j + 1).sum())
                for j, name in enumerate(self.adversary_names)
            },
        }
        return header, rgba8.tobytes(), self.owner.astype(np.uint8).tobytes()


def warm_up(mnist_models: MnistModels | None, lizard_models: LizardModels | None) -> None:
    """Compile every program a session runs (the steps, the views, the edits: all shared
    by every session), the two kinds in parallel threads, so that no click waits for a
    compilation."""

    def act(session: Session, **action) -> None:
        error = session.handle(json.dumps(action))
        if error:
            raise RuntimeError(f"warm-up action {action} refused: {error['message']}")

    def mnist_programs():
        s = MnistSession(mnist_models)
        s.load_digit(0)
        act(s, type="paint", cells=[[0, 0, 1.0]], blend="max")
        if mnist_models.adversary is not None:
            act(s, type="adversary", cells=[[1, 1]])
        act(s, type="step", n=1)
        s.frame()

    def lizard_programs():
        s = LizardSession(lizard_models)
        act(s, type="cut", row=0, col=0, radius=1)
        for name in list(s.ks)[:1]:
            act(s, type="k", name=name, value=0.5)
        for name in s.adversary_names[:1]:
            act(s, type="adversary", name=name, cells=[[0, 0]])
        act(s, type="step", n=1)
        s.frame()

    jobs = [fn for fn, m in ((mnist_programs, mnist_models), (lizard_programs, lizard_models)) if m]
    with ThreadPoolExecutor(len(jobs) or 1) as pool:
        for future in [pool.submit(fn) for fn in jobs]:
            future.result()
