"""Per-layer sensitivity: quantize one layer at a time and see which layers hurt.

A layer is a conv/dot and its quantizers (its weight and its activation input); requantizing
ops (adds, concatenations, pooling) are layers of their own. With every other quantizer off,
the damage of quantizing one layer is measured against the float model on calibration data:
the drop in top-1 agreement (or accuracy, with labels) and the KL divergence of the output
distribution. Ranked, the list names the layers to keep in higher precision, to equalize,
or to give per-channel weights. Sites are switched with arrays (``enabled`` as a dict), so
the model is compiled once for all layers.
"""
import dataclasses
from typing import Dict, Iterable, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from core import fast_depthwise
from quant.fakequant import QuantizedModel


@dataclasses.dataclass
class LayerSensitivity:
    layer: str
    sites: List[str]
    source: str
    kl: float                      # mean KL(float || quantized) of the output softmax
    agreement: float               # top-1 agreement with the float model
    accuracy: Optional[float]      # with labels


def layers(model: QuantizedModel) -> Dict[str, List[str]]:
    grouped: Dict[str, List[str]] = {}
    for site in model.sites.values():
        grouped.setdefault(site.layer, []).append(site.name)
    return grouped


def layer_sensitivity(model: QuantizedModel, variables, qparams, batches: Iterable,
                      ) -> List[LayerSensitivity]:
    """Most damaging layer first. ``batches``: arrays or (images, labels) tuples."""
    batches = list(batches)
    names = list(model.sites)

    @jax.jit
    @fast_depthwise.on_cpu
    def run(v, switches, x):
        float_logits = model.float_fn(v, x)
        quant_logits = model.apply(v, qparams, x, enabled=switches)
        p = jax.nn.log_softmax(float_logits, -1)
        q = jax.nn.log_softmax(quant_logits, -1)
        kl = jnp.sum(jnp.exp(p) * (p - q), -1)
        return kl, jnp.argmax(quant_logits, -1), jnp.argmax(float_logits, -1)

    results = []
    for layer, sites in layers(model).items():
        switches = {n: jnp.asarray(n in sites) for n in names}
        kls, agree, correct, count = [], 0, 0, 0
        for batch in batches:
            x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
            kl, pred, ref = run(variables, switches, x)
            kls.append(np.asarray(kl))
            agree += int(np.sum(np.asarray(pred) == np.asarray(ref)))
            if y is not None:
                correct += int(np.sum(np.asarray(pred) == np.asarray(y)))
            count += len(np.asarray(pred))
        has_labels = any(isinstance(b, (tuple, list)) for b in batches)
        first = model.sites[sites[0]]
        results.append(LayerSensitivity(layer, sites, first.source,
                                        float(np.mean(np.concatenate(kls))), agree / count,
                                        correct / count if has_labels else None))
    return sorted(results, key=lambda r: -r.kl)


def format_report(results: List[LayerSensitivity], top: int = 10) -> str:
    lines = [f"{'layer':42s} {'KL':>10s} {'agree':>7s}  source"]
    for r in results[:top]:
        lines.append(f"{r.layer:42s} {r.kl:10.3g} {r.agreement:7.3f}  {r.source}")
    return "\n".join(lines)
