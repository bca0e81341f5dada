"""Saving a (pruned) model so it can be run anywhere, without this code base.

A pruned model is a rewritten jaxpr, not a Flax module: re-creating it would need the
original model's source, the channel analysis and the keep-set. Instead ``save`` serializes
the computation with ``jax.export`` (StableHLO, with a symbolic batch dimension so any batch
size runs) and writes the variables next to it (``variables.npz``, one array per parameter
with its path in ``manifest.json``). The parameters are arguments of the exported function,
not constants, so they can be inspected, fine-tuned or swapped after loading.

``load`` needs only jax and numpy (``save`` imports its helpers from the project inside the
function), so this file can be copied next to a saved model and used in a fresh process
on another machine.
"""
import json
import os
from typing import Any, Callable, Dict, List, Sequence

import jax
import numpy as np
from jax import export as jax_export

FORMAT = "jax-export+npz/1"


def save(directory: str, fn: Callable, variables, *example_inputs,
         dynamic_batch: bool = True) -> str:
    """Writes ``fn(variables, *inputs)`` to ``directory`` (model.jaxexport, variables.npz,
    manifest.json). With ``dynamic_batch`` axis 0 of every input is symbolic."""
    # Imported here: load() must run where the project is not importable.
    from core.trace import input_specs, path_to_str
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    flat, treedef = jax.tree_util.tree_flatten_with_path(variables)
    paths = [path_to_str(p) for p, _ in flat]
    leaves = [np.asarray(leaf) for _, leaf in flat]

    def flat_fn(params, *inputs):
        return fn(jax.tree_util.tree_unflatten(treedef, params), *inputs)

    param_specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    exported = jax_export.export(jax.jit(flat_fn))(
        param_specs, *input_specs(example_inputs, dynamic_batch))
    with open(os.path.join(directory, "model.jaxexport"), "wb") as f:
        f.write(exported.serialize())
    np.savez(os.path.join(directory, "variables.npz"),
             **{f"p{i}": leaf for i, leaf in enumerate(leaves)})
    manifest = {"format": FORMAT, "parameters": paths,
                "inputs": [{"shape": [str(d) for d in s.shape], "dtype": str(s.dtype)}
                           for s in input_specs(example_inputs, dynamic_batch)]}
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return directory


class PortableModel:
    """A loaded model: ``model(*inputs)`` with the saved variables, or
    ``model.call(variables, *inputs)`` with others of the same shapes."""

    def __init__(self, exported, paths: List[str], arrays: List[np.ndarray], manifest):
        self.exported = exported
        self.paths = paths
        self.arrays = arrays
        self.manifest = manifest

    @property
    def variables(self) -> Dict[str, np.ndarray]:
        return dict(zip(self.paths, self.arrays))

    def call(self, variables: Dict[str, Any], *inputs):
        return self.exported.call([variables[p] for p in self.paths], *inputs)

    def __call__(self, *inputs):
        return self.exported.call(list(self.arrays), *inputs)


def load(directory: str) -> PortableModel:
    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{directory}: unknown format {manifest.get('format')!r}")
    with open(os.path.join(directory, "model.jaxexport"), "rb") as f:
        exported = jax_export.deserialize(bytearray(f.read()))
    with np.load(os.path.join(directory, "variables.npz")) as data:
        arrays = [data[f"p{i}"] for i in range(len(manifest["parameters"]))]
    return PortableModel(exported, manifest["parameters"], arrays, manifest)
