"""nca-adv: adversarial reprogramming of Neural Cellular Automata, in JAX.

The public API (see README.md, "Using nca-adv from Python"):

- models as values: :class:`GrowingCA`, :class:`MnistCA` (the authors' architectures by
  default), :func:`make_step` (model, params -> step), :class:`CA` (a model bound to its
  params, a pytree), :func:`load_ca` / :func:`load_model` / :func:`save_params`;
  ``Model``, the type of what evaluations and trainers take as a model: a :class:`CA`
  (fire rate included), a bare params dict (default fire rate) or a step ``(x, key) -> x``;
- rollouts: :func:`rollout` (any step, jittable);
- attacks as step transforms ``Step -> Step``: :func:`with_adversaries`, :func:`perturb`,
  composed with :func:`chain` (and :func:`identity`);
- training: :class:`Recipe` and :func:`train` (the whole training in one jitted function),
  or files, checkpoints and resume with :mod:`nca_adv.training.jobs`.

Everything else lives in the layer subpackages: ``models``, ``attacks``, ``training``,
``evaluation``, ``io``, ``media`` (and ``playground``).
"""

from importlib import metadata as _metadata

from nca_adv.attacks.adversaries import with_adversaries
from nca_adv.attacks.perturbation import perturb
from nca_adv.attacks.transforms import chain, identity
from nca_adv.io import load_ca, load_model, save_params
from nca_adv.models.architecture import CA, GrowingCA, MnistCA, as_stepper, make_step
from nca_adv.models.architecture import ModelLike as Model
from nca_adv.models.rollout import rollout
from nca_adv.training.engine import Recipe, train

try:
    __version__ = _metadata.version("nca-adv")
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    "CA",
    "GrowingCA",
    "MnistCA",
    "Model",
    "Recipe",
    "as_stepper",
    "chain",
    "identity",
    "load_ca",
    "load_model",
    "make_step",
    "perturb",
    "rollout",
    "save_params",
    "train",
    "with_adversaries",
]
