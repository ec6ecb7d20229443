"""Training that starts from the weights of an exported SavedModel (train.init_from).

A run that starts at step 0 (no checkpoint in its workdir) with `config.train.init_from`
set to one of this project's exports (a model base path such as `pretrained/hfsgm`,
whose newest version is read, or one version folder) takes that model's weights,
batch-norm statistics included, instead of a random initialisation. The optimizer, the
step count, the learning-rate schedule and the data stream start afresh; weights stored
in half precision are cast to the model's. A run that resumes from its own checkpoint
ignores init_from. The export must come from the same model and model_kwargs: every
variable's shape is checked, and a mismatch is a ConfigError naming the first one. One
exception: a model that extends a simpler one (`warm_start_additions()`) starts from the
simpler model's export. SCHA-VAE's attention over an hfsgm that pools by the mean starts
as the mean, so the model starts as the same function; a statistician with L layers of z
starts from a one-layer export with its decoder blind to layers 2..L (their kernel rows
zero, `warm_start_widened()`), so its likelihood is the export's and only the new layers'
KL, from their fresh initialisation, is added to the bound.
"""

import json
import pathlib

import tensorflow as tf
from absl import logging

from oneshot_tf import errors, export, pretrained


def exported_weights(path) -> list:
    """The exported model's variables (tf.Variables, in the model's order)."""
    loaded = tf.saved_model.load(str(path))
    if not hasattr(loaded, "model_variables"):
        raise errors.ConfigError(f"{path} is not an export of oneshot_tf (it has no model_variables)")
    return list(loaded.model_variables)


def _training_record(folder) -> dict:
    """What the export in `folder` (a version folder) records of its training
    (export.TRAINING_RECORD); {} for an export that predates the record."""
    path = pathlib.Path(folder) / export.TRAINING_RECORD
    return json.loads(path.read_text()) if path.exists() else {}


def trained_steps(folder) -> int | None:
    """Steps the model exported in `folder` (a version folder) was trained for in all:
    from the export's own record, else from the eval.json a shipped model keeps beside
    its versions (its `trained_steps`, else `checkpoint_step`); None when neither says."""
    record = _training_record(folder)
    if "trained_steps" in record:
        return record["trained_steps"]
    evaluation = pathlib.Path(folder).parent / "eval.json"
    if not evaluation.exists():
        return None
    result = json.loads(evaluation.read_text())
    return result.get("trained_steps", result.get("checkpoint_step"))


def _differing_kwargs(folder, model_kwargs) -> str:
    """The model_kwargs that the export in `folder` was trained with (its record, else the
    config.json beside a shipped model's versions) sets otherwise than `model_kwargs`, as
    "; <that file> has a=1 (here 2), ..."; "" if none or not known."""
    path = pathlib.Path(folder) / export.TRAINING_RECORD
    if not path.exists():
        path = pathlib.Path(folder).parent / "config.json"
    if model_kwargs is None or not path.exists():
        return ""
    trained = json.loads(path.read_text()).get("model_kwargs", {})
    here = json.loads(json.dumps(dict(model_kwargs)))  # Tuples as JSON lists, like the file's.
    differing = [f"{key}={trained[key]!r} (here {here.get(key)!r})" for key in trained if trained[key] != here.get(key)]
    return f"; {path} has {', '.join(differing)}" if differing else ""


def _fits(variable, weight, widened: bool) -> bool:
    """Whether `weight` can start `variable`: the same shape, or for a widened kernel
    fewer (or as many) rows and otherwise the same shape."""
    have, want = tuple(weight.shape), tuple(variable.shape)
    if widened:
        return len(have) == len(want) and have[0] <= want[0] and have[1:] == want[1:]
    return have == want


def _started(variable, weight) -> tf.Tensor:
    """`weight` cast to `variable`'s dtype, zero rows appended up to its rows."""
    weight = tf.cast(weight, variable.dtype)
    if weight.shape == variable.shape:  # Scalars too, which have no rows.
        return weight
    missing = variable.shape[0] - weight.shape[0]
    return tf.concat([weight, tf.zeros([missing, *weight.shape[1:]], variable.dtype)], axis=0)


def initialise(model, path, model_kwargs=None) -> pathlib.Path:
    """Assigns the weights exported at `path` (see pretrained.saved_model_dir) to the built `model`;
    returns the SavedModel folder read. Nothing is assigned unless every shape fits.
    An export without the model's `warm_start_additions()` fills the rest of the model;
    the additions then start as what they replace where they can, and the kernels of
    `warm_start_widened()` take the export's rows, zeros after. `model_kwargs` (the
    model's) lets a mismatch's error name the settings in which a shipped model differs."""
    folder = pretrained.saved_model_dir(path, "train.init_from")
    weights = exported_weights(folder)
    variables, additions, widened = model.variables, [], set()
    if len(weights) != len(variables):
        additions = model.warm_start_additions()
        added = {id(variable) for layer in additions for variable in layer.variables}
        variables = [variable for variable in variables if id(variable) not in added]
        widened = {id(variable) for variable in model.warm_start_widened()}
    if len(weights) != len(variables):
        raise errors.ConfigError(
            f"train.init_from: {folder} holds {len(weights)} variables, the configured model has "
            f"{len(model.variables)}: export and config must be the same model and model_kwargs"
            + _differing_kwargs(folder, model_kwargs)
        )
    for variable, weight in zip(variables, weights):
        if not _fits(variable, weight, id(variable) in widened):
            raise errors.ConfigError(
                f"train.init_from: {folder} has shape {tuple(weight.shape)} where the configured model's "
                f"{variable.path} has {tuple(variable.shape)}: export and config must be the same model "
                f"and model_kwargs" + _differing_kwargs(folder, model_kwargs)
            )
    for variable, weight in zip(variables, weights):
        variable.assign(_started(variable, weight))
    for layer in additions:
        if hasattr(layer, "start_as_replaced"):
            layer.start_as_replaced()
    if additions:
        logging.info("train.init_from: %d layers new to the export (%d widened kernels)", len(additions), len(widened))
    return folder
