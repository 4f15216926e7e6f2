"""Model weights in and out: the shipped ``.npz`` format, project checkpoints, and the
authors' TF.js graph-model JSON.

Weights file format (``.npz``, float32): the key ``kind`` (``growing`` or ``mnist``) and

- growing: ``w1`` (48, 128), ``b1`` (128,), ``w2`` (128, 16), ``b2`` (16,)
- mnist:   ``conv3x3_w`` (3, 3, 20, 80), ``conv3x3_b`` (80,), ``dense1_w`` (80, 80),
  ``dense1_b`` (80,), ``dense2_w`` (80, 19), ``dense2_b`` (19,)

which is also the layout of ``../shared/reference/npz`` (1x1 conv kernels are accepted
with their leading 1, 1). Perception feature order is the original's (``c*3 + m``).
Files written now also hold ``architecture``, the model's description as JSON
(:mod:`nca_adv.models.architecture`); a model of another architecture (other sizes, a learned
perception) is stored as ``param/<path>`` arrays beside it. Loading rebuilds the model and
refuses missing, extra or misshaped arrays; files without ``architecture`` are the authors'
architecture of their kind.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging as std_logging
import os
import re
import sys
import warnings
import zipfile
from importlib import resources
from pathlib import Path

import jax
import numpy as np

from nca_adv.errors import UserError
from nca_adv.models import architecture

KINDS = ("growing", "mnist")

# flat file key -> (flax module name, param name, expected shape)
_LAYOUT = {
    "growing": {
        "w1": ("dense1", "kernel", (48, 128)),
        "b1": ("dense1", "bias", (128,)),
        "w2": ("dense2", "kernel", (128, 16)),
        "b2": ("dense2", "bias", (16,)),
    },
    "mnist": {
        "conv3x3_w": (None, "perceive_kernel", (3, 3, 20, 80)),
        "conv3x3_b": (None, "perceive_bias", (80,)),
        "dense1_w": ("dense1", "kernel", (80, 80)),
        "dense1_b": ("dense1", "bias", (80,)),
        "dense2_w": ("dense2", "kernel", (80, 19)),
        "dense2_b": ("dense2", "bias", (19,)),
    },
}


class ModelFormatError(UserError):
    """A weights file that is not what it claims to be."""


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")


def params_from_arrays(arrays: dict[str, np.ndarray], kind: str, source: str = "arrays") -> dict:
    """Flat arrays (file layout above) -> flax params, with shape checks."""
    _check_kind(kind)
    params: dict = {}
    for key, (module, name, shape) in _LAYOUT[kind].items():
        if key not in arrays:
            raise ModelFormatError(
                f"{source}: missing {key!r} for a {kind} model (has {sorted(arrays)})"
            )
        a = np.asarray(arrays[key], np.float32)
        if a.ndim == len(shape) + 2 and a.shape[:2] == (1, 1):
            a = a[0, 0]  # a 1x1 conv kernel is a dense kernel
        if a.shape != shape:
            raise ModelFormatError(f"{source}: {key!r} has shape {a.shape}, expected {shape}")
        if not np.all(np.isfinite(a)):
            raise ModelFormatError(f"{source}: {key!r} holds non-finite values")
        (params.setdefault(module, {}) if module else params)[name] = a
    extra = set(arrays) - set(_LAYOUT[kind])
    if extra:
        raise ModelFormatError(f"{source}: unexpected arrays {sorted(extra)} for a {kind} model")
    return params


def arrays_from_params(params: dict, kind: str) -> dict[str, np.ndarray]:
    """Flax params -> flat arrays in the file layout."""
    _check_kind(kind)
    out = {}
    for key, (module, name, _) in _LAYOUT[kind].items():
        out[key] = np.asarray((params[module] if module else params)[name], np.float32)
    return out


PARAM_PREFIX = "param/"  # arrays of a model of another architecture: param/<module>/<name>


def save_params(
    path: str | os.PathLike,
    params,
    kind: str | None = None,
    model: architecture.Model | None = None,
) -> None:
    """Write a model as a ``.npz`` weights file with its description beside them (atomic:
    temp file + rename). ``params``: a :class:`~nca_adv.models.architecture.CA` (its model,
    fire rate included, is recorded) or a params dict with ``model``. A bare dict without
    ``model`` cannot say its fire rate: it is saved with the architecture its shapes show
    at the default rate, and a warning says so. Every parameter is checked against the
    model (nothing is dropped, nothing extra is written)."""
    if isinstance(params, architecture.CA):
        if model is not None and model != params.model:
            raise ModelFormatError(
                f"{path}: model= {architecture.to_json(model)} contradicts the CA's own "
                f"{architecture.to_json(params.model)}"
            )
        model, params = params.model, params.params
    if kind is None:
        if model is None:
            raise ModelFormatError(f"{path}: give kind= or model= (or a CA) for a bare params dict")
        kind = model.kind
    found = _params_kind(params) if model is None else None
    if found is not None and found != kind:
        raise ModelFormatError(f"{path}: these are {found} CA parameters, not a {kind} CA's")
    if model is None and isinstance(params, dict):
        try:
            inferred = architecture.infer(jax.tree.map(np.asarray, params), kind)
        except ValueError:
            inferred = None
        if inferred is not None:
            warnings.warn(
                f"save_params({str(path)!r}): a bare params dict does not say its fire rate; "
                f"saved at the default {inferred.fire_rate}. Pass a CA (nca_adv.CA(model, "
                "params)) or model= to record the rule's own",
                stacklevel=2,
            )
    _check_kind(kind)
    params = jax.tree.map(np.asarray, params)
    try:
        model = model or architecture.infer(params, kind)
        architecture.check_params(model, params, f"parameters for {path}")
    except ValueError as e:
        raise ModelFormatError(str(e)) from e
    if model.kind != kind:
        raise ModelFormatError(f"{path}: a {model.kind} model cannot be saved as {kind}")
    if model == architecture.default(kind):
        arrays = arrays_from_params(params, kind)
    else:
        arrays = {PARAM_PREFIX + k: np.asarray(v, np.float32) for k, v in _flat(params).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    description = np.array(architecture.to_json(model))
    np.savez(tmp, kind=np.array(kind), architecture=description, **arrays)
    os.replace(tmp, path)


def _flat(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: v})
    return out


def _unflat(arrays: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, a in arrays.items():
        *parents, name = key.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = np.asarray(a, np.float32)
    return tree


def _model_from_arrays(arrays: dict[str, np.ndarray], kind: str, source: str):
    """(model, params) from a weights file's arrays (``kind``/``architecture`` removed)."""
    text = arrays.pop("architecture", None)
    try:
        model = architecture.from_json(str(text)) if text is not None else None
    except ValueError as e:
        raise ModelFormatError(f"{source}: {e}") from e
    if model is not None and model.kind != kind:
        raise ModelFormatError(f"{source} holds a {model.kind} model, expected {kind}")
    generic = {k[len(PARAM_PREFIX) :]: v for k, v in arrays.items() if k.startswith(PARAM_PREFIX)}
    if generic:
        if model is None:
            raise ModelFormatError(f"{source}: param/ arrays without an architecture description")
        other = sorted(set(arrays) - {PARAM_PREFIX + k for k in generic})
        if other:
            raise ModelFormatError(f"{source}: unexpected arrays {other}")
        params = _unflat(generic)
    else:
        params = params_from_arrays(arrays, kind, source)
        model = model or architecture.default(kind)
    try:
        architecture.check_params(model, params, source)
    except ValueError as e:
        raise ModelFormatError(str(e)) from e
    for k, a in _flat(params).items():
        if not np.all(np.isfinite(a)):
            raise ModelFormatError(f"{source}: {k!r} holds non-finite values")
    return model, params


def _layout_kind(keys) -> str | None:
    """The kind whose file layout ``keys`` hold, if any."""
    found = [k for k, layout in _LAYOUT.items() if set(layout) <= set(keys)]
    return found[0] if len(found) == 1 else None


def load_npz(path: str | os.PathLike, kind: str) -> dict:
    """A ``.npz`` weights file -> flax params of ``kind``. Never unpickles: a file that is
    not a zip of plain arrays is refused."""
    return read_npz(path, kind).params


def read_npz(path: str | os.PathLike, kind: str) -> architecture.CA:
    """A ``.npz`` weights file -> its model and params (:class:`architecture.CA`)."""
    if Path(path).is_dir():
        raise ModelFormatError(f"{path} is a directory, not a .npz weights file")
    # np.load reads a non-zip file as .npy or pickle; its error then talks about trusting
    # pickles, which is the wrong advice for a file that is simply not a weights file.
    if not zipfile.is_zipfile(path):
        raise ModelFormatError(f"{path} is not a weights file (not a readable .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:
        raise ModelFormatError(
            f"{path} is not a weights file (not a readable .npz archive of plain arrays: {e})"
        ) from e
    file_kind = str(arrays.pop("kind", None) or _layout_kind(arrays) or kind)
    if file_kind != kind:
        raise ModelFormatError(f"{path} holds a {file_kind} model, expected {kind}")
    return architecture.CA(*_model_from_arrays(arrays, kind, str(path)))


# ----------------------------------------------------------------------------- TF.js
_TRAINABLE = re.compile(r"(ReadVariableOp/resource|StatefulPartitionedCall/args_\d+)$")


def _tfjs_weights(path: Path) -> list[np.ndarray]:
    """The trainable float32 ``Const`` tensors of a TF.js graph model, in graph order."""
    try:
        graph = json.loads(path.read_text())
        nodes = graph["modelTopology"]["node"]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path} is not JSON: {e}") from e
    except (KeyError, TypeError) as e:
        raise ModelFormatError(f"{path} is not a TF.js graph model (no modelTopology.node)") from e
    weights = []
    for node in nodes:
        if node.get("op") != "Const" or not _TRAINABLE.search(node.get("name", "")):
            continue
        tensor = node.get("attr", {}).get("value", {}).get("tensor", {})
        if tensor.get("dtype") != "DT_FLOAT" or "tensorContent" not in tensor:
            continue
        shape = tuple(int(d["size"]) for d in tensor.get("tensorShape", {}).get("dim", []))
        raw = base64.b64decode(tensor["tensorContent"])
        a = np.frombuffer(raw, "<f4")
        if a.size != int(np.prod(shape)):
            raise ModelFormatError(f"{path}: {node['name']} has {a.size} values for shape {shape}")
        weights.append(a.reshape(shape).copy())
    return weights


def load_tfjs(path: str | os.PathLike, kind: str) -> dict:
    """The authors' TF.js graph-model JSON -> flax params of ``kind``."""
    _check_kind(kind)
    path = Path(path)
    weights = _tfjs_weights(path)
    keys = list(_LAYOUT[kind])
    if len(weights) != len(keys):
        shapes = [w.shape for w in weights]
        other = [k for k in KINDS if k != kind and len(_LAYOUT[k]) == len(weights)]
        held = f"it holds a {other[0]} model, expected {kind}: " if other else ""
        raise ModelFormatError(
            f"{path}: {held}found {len(weights)} trainable tensors {shapes}, a {kind} model "
            f"has {len(keys)}"
        )
    return params_from_arrays(dict(zip(keys, weights)), kind, str(path))


# ----------------------------------------------------------------------------- checkpoints
def _checkpoint_dir(path: str | os.PathLike) -> Path:
    """A workdir, its ``checkpoints`` folder or a step folder -> the (latest) step folder."""
    path = Path(path).absolute()
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if path.is_dir():
        steps = [int(p.name) for p in path.iterdir() if p.name.isdigit()]
        if steps:
            path = path / str(max(steps))
    return path


def checkpoint_step(path: str | os.PathLike) -> int:
    """The training iteration of the checkpoint :func:`load_checkpoint_params` would read."""
    name = _checkpoint_dir(path).name
    if not name.isdigit():
        raise ModelFormatError(f"{path} holds no step-numbered checkpoint")
    return int(name)


def _params_kind(params: object) -> str | None:
    """The kind of a flax params tree, told by its layers' shapes (None: neither). A
    learned-perception Growing CA has a ``perceive_kernel`` too: the MNIST CA's dense2
    writes every channel but the grey one."""
    if not isinstance(params, dict):
        return None
    if (
        params.get("dense2", {}).get("kernel") is not None
        and np.ndim(params["dense2"]["kernel"]) == 3
    ):  # run-stacked
        params = jax.tree.map(lambda a: a[0], params)
    try:
        return architecture.infer(jax.tree.map(np.asarray, params)).kind
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    if "perceive_kernel" in params:
        return "mnist"
    dense1 = params.get("dense1")
    kernel = dense1.get("kernel") if isinstance(dense1, dict) else None
    if kernel is not None and tuple(np.shape(kernel))[-2:] == _LAYOUT["growing"]["w1"][2]:
        return "growing"
    return None


_FAILED_READS: list[str] = []  # checkpoints this process failed to read (and said so)


def _orbax_leftover(unraisable) -> bool:
    """An unraisable report from inside orbax after a read of ours failed: the same failure
    again, from an in-flight read nobody waits for any more."""
    tb = unraisable.exc_traceback
    while tb is not None:
        if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _ignore_closed_loop_callbacks() -> None:
    """Drop Python's "unraisable" reports of ``RuntimeError('Event loop is closed')``, and
    orbax's once a checkpoint read has failed.

    When orbax fails to read a corrupt checkpoint it closes its private event loop while
    tensorstore reads are still in flight; their completion callbacks then report that
    error (or the read error itself, when garbage-collected) as unraisable tracebacks, at
    random, after ours. They carry nothing beyond the error raised here; every other
    unraisable report still goes to the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "nca_adv_quiet_loop", False):
        return

    def hook(unraisable):
        e = unraisable.exc_value
        if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
            return
        if _FAILED_READS and _orbax_leftover(unraisable):
            return
        previous(unraisable)

    hook.nca_adv_quiet_loop = True
    sys.unraisablehook = hook


def _first_line(e: BaseException) -> str:
    """The gist of a library error: its first line, without tensorstore's repr tail."""
    lines = str(e).strip().splitlines()
    text = lines[0].split(" See full TensorStore details")[0] if lines else ""
    return f"{type(e).__name__}: {text[:300]}"


def load_checkpoint_params(path: str | os.PathLike, kind: str) -> dict:
    """Params from a training workdir, its ``checkpoints`` folder, or one step folder."""
    return _load_checkpoint_ca(path, kind).params


def _load_checkpoint_ca(path: str | os.PathLike, kind: str) -> architecture.CA:
    """The model and params of a checkpoint (see :func:`load_checkpoint_params`)."""
    from nca_adv.extras import require

    ocp = require("orbax.checkpoint", "checkpoints", "reading a training workdir")

    _check_kind(kind)
    given, path = Path(path), _checkpoint_dir(path)
    item = path / "default"
    if not item.is_dir():
        if (given / "checkpoints").is_dir():
            raise ModelFormatError(f"{given} holds no checkpoint (its checkpoints/ is empty)")
        raise ModelFormatError(
            f"{given} is neither a training workdir (no checkpoints/ inside) nor a checkpoint "
            "(no default/ inside)"
        )
    _ignore_closed_loop_callbacks()
    # orbax logs dozens of INFO lines per read, and warnings before our own error on a
    # corrupt one; the error raised below says what is wrong.
    quiet = {"absl": std_logging.ERROR, "asyncio": std_logging.CRITICAL}
    levels = {name: std_logging.getLogger(name).level for name in quiet}
    for name, level in quiet.items():
        std_logging.getLogger(name).setLevel(level)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            metadata = checkpointer.metadata(item).item_metadata
            if metadata is None:
                raise ModelFormatError(
                    f"checkpoint {path} cannot be read: its metadata is missing or corrupt"
                )
            # Restore onto one local device whatever mesh the run was saved from.
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            abstract = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata.tree
            )
            state = checkpointer.restore(item, abstract)
    except ModelFormatError:
        _FAILED_READS.append(str(path))
        raise
    except Exception as e:  # orbax raises many types; one line, the cause kept
        _FAILED_READS.append(str(path))
        raise ModelFormatError(
            f"checkpoint {path} cannot be read (corrupt or incomplete): {_first_line(e)}"
        ) from e
    finally:
        for name, level in levels.items():
            std_logging.getLogger(name).setLevel(level)
    if not isinstance(state, dict) or "params" not in state:
        raise ModelFormatError(f"checkpoint {path} holds no 'params'")
    hash_file = path.parent / f"{path.name}.sha256"  # written beside it by training.Checkpointer
    if hash_file.is_file():
        from nca_adv.training.runtime import content_hash

        if hash_file.read_text().strip() != content_hash(state):
            raise ModelFormatError(
                f"checkpoint {path} cannot be read: its content hash does not match the one "
                "written with it (corrupt data)"
            )
    return _checkpoint_ca(jax.tree.map(np.asarray, state["params"]), kind, path)


def _checkpoint_ca(params, kind: str, path: Path) -> architecture.CA:
    """The one run's model and params of a checkpoint's (possibly run-stacked) params:
    the model from the workdir's config.json ``architecture`` when recorded, else from
    the shapes."""
    found = _params_kind(params)
    if found is not None and found != kind:
        raise ModelFormatError(f"checkpoint {path} holds a {found} model, expected {kind}")
    if not isinstance(params, dict) or "dense2" not in params:
        raise ModelFormatError(f"checkpoint {path} holds no {kind} model parameters")
    if params["dense2"]["kernel"].ndim == 3:  # the engine stacks runs on a leading axis
        runs = params["dense2"]["kernel"].shape[0]
        if runs != 1:
            raise ModelFormatError(
                f"checkpoint {path} holds {runs} runs (a sweep); give one run's folder "
                "(run_<name>/, with its params.npz)"
            )
        params = jax.tree.map(lambda a: a[0], params)
    config = path.parent.parent / "config.json" if path.parent.name == "checkpoints" else None
    described, recorded = None, {}
    if config is not None and config.is_file():
        try:
            recorded = json.loads(config.read_text())
            described = recorded.get("architecture")
        except (OSError, json.JSONDecodeError, AttributeError):
            described, recorded = None, {}
    try:
        if described:
            model = architecture.from_dict(described)
        else:
            # The architecture from the shapes, the rates the run trained at from its
            # config (as the run's params.npz records them).
            model = architecture.infer(params, kind)
            rates = {
                k: recorded[k]
                for k in ("fire_rate", "noise_std")
                if isinstance(recorded, dict) and k in recorded and hasattr(model, k)
            }
            if rates:
                model = dataclasses.replace(model, **rates)
        architecture.check_params(model, params, f"checkpoint {path}")
    except (ValueError, TypeError) as e:
        raise ModelFormatError(str(e)) from e
    if model.kind != kind:
        raise ModelFormatError(f"checkpoint {path} holds a {model.kind} model, expected {kind}")
    return architecture.CA(model, params)


# ----------------------------------------------------------------------------- resolution
def shipped_models() -> dict[str, Path]:
    """Shipped model name -> weights file in ``nca_adv/assets/models``."""
    folder = Path(str(resources.files("nca_adv") / "assets" / "models"))
    return {p.stem: p for p in sorted(folder.glob("*.npz"))}


def load_model(spec: str, kind: str) -> dict:
    """A shipped name (``lizard``, ``mnist``), a ``.npz``, a TF.js ``.json``, or a
    project checkpoint/workdir -> flax params of ``kind``."""
    return load_ca(spec, kind).params


def load_ca(spec: str, kind: str) -> architecture.CA:
    """:func:`load_model` with the model's architecture: a :class:`architecture.CA`
    (``ca.model``, ``ca.params``, ``ca.step(x, key)``)."""
    _check_kind(kind)
    shipped = shipped_models()
    if spec in shipped:
        return read_npz(shipped[spec], kind)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(
            f"model {spec!r} is neither a shipped model {sorted(shipped)} nor an existing path"
        )
    if path.suffix == ".npz":
        return read_npz(path, kind)
    if path.suffix == ".json":
        return architecture.CA(architecture.default(kind), load_tfjs(path, kind))
    if path.is_dir():
        if not (path / "checkpoints").is_dir() and (path / "params.npz").is_file():
            return read_npz(path / "params.npz", kind)  # one run's folder of a sweep
        return _load_checkpoint_ca(path, kind)
    raise ModelFormatError(
        f"{path}: unknown model format (expected .npz, .json or a checkpoint dir)"
    )
