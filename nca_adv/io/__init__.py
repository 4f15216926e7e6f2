"""Files in and out: model weights (``.npz``, the authors' TF.js files, training
checkpoints, shipped names), MNIST data, targets and their edits, and export of a trained
run into the package's assets.

The weights functions are re-exported here (``nca_adv.io.load_model``)."""

from nca_adv.io.weights import (
    KINDS,
    ModelFormatError,
    arrays_from_params,
    checkpoint_step,
    load_ca,
    load_checkpoint_params,
    load_model,
    load_npz,
    load_tfjs,
    params_from_arrays,
    read_npz,
    save_params,
    shipped_models,
)

__all__ = [
    "KINDS",
    "ModelFormatError",
    "arrays_from_params",
    "checkpoint_step",
    "load_ca",
    "load_checkpoint_params",
    "load_model",
    "load_npz",
    "load_tfjs",
    "params_from_arrays",
    "read_npz",
    "save_params",
    "shipped_models",
]
