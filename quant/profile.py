"""NPU profiles: what an integer target supports, as data (quant/profiles/*.json).

Which tensors get which quantizer, and which ops a target can run at all, is a property
of the target, not of the model. A profile file names the weight quantizer (bits,
per-channel or per-tensor, symmetric), the activation quantizer (bits, unsigned or signed),
the primitives whose activation operands are (re)quantized, the primitives the target
supports ("all" for a runtime that falls back to float), and constraints checked by the
linter. Add a target by adding a file; ``load_profile("name")`` or a path.

A runtime whose integer kernels behave differently per CPU (onnxruntime's u8s8 kernels
saturate on x86 without VNNI, see quant/target_cpu.py) lists the changes per CPU kind in
``host_cpu_adjustments``; the loaded profile applies the one for the target CPU and
records it in ``target_cpu`` and ``adjustment`` (written into every experiment's result).
"""
import dataclasses
import glob
import json
import os
from typing import Any, Dict, FrozenSet, Optional, Union

from core import primitives
from quant import target_cpu as target_cpu_lib

PROFILE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles")


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """An integer format: ``bits`` wide, signed or unsigned, symmetric or with a zero point."""
    bits: int = 8
    symmetric: bool = True
    unsigned: bool = False
    per_channel: bool = False

    @property
    def qmin(self) -> int:
        return 0 if self.unsigned else -(2 ** (self.bits - 1)) + (1 if self.symmetric else 0)

    @property
    def qmax(self) -> int:
        return 2 ** self.bits - 1 if self.unsigned else 2 ** (self.bits - 1) - 1

    def replace(self, **changes) -> "QuantSpec":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    description: str
    weights: QuantSpec
    activations: QuantSpec
    quantize_inputs_of: FrozenSet[str]
    supported: Optional[FrozenSet[str]]          # None: every primitive runs
    supported_if_constant_operand: FrozenSet[str]
    constraints: Dict[str, Any]
    target_cpu: Optional[str] = None    # quant.target_cpu kind the profile was loaded for
    adjustment: str = ""                # what host_cpu_adjustments changed for it, and why
    cpu_dependent: bool = False         # whether the JSON has host_cpu_adjustments
    # ONNX op type -> when the runner runs it with an integer kernel (a rule name of
    # quant.qdq_placement.RULES); empty: every quantizer is written (an NPU compiler decides)
    integer_kernels: Dict[str, str] = dataclasses.field(default_factory=dict)

    def supports(self, primitive: str, has_activation_operands_only: bool = False) -> bool:
        if self.supported is None:
            return True
        if primitive in self.supported:
            return True
        return primitive in self.supported_if_constant_operand and \
            not has_activation_operands_only

    def with_weights(self, **changes) -> "Profile":
        return dataclasses.replace(self, weights=self.weights.replace(**changes))

    def with_activations(self, **changes) -> "Profile":
        return dataclasses.replace(self, activations=self.activations.replace(**changes))


def available_profiles():
    return sorted(os.path.splitext(os.path.basename(p))[0]
                  for p in glob.glob(os.path.join(PROFILE_DIR, "*.json")))


def _check_primitive_names(data: dict, path: str) -> None:
    """Every op name must be one JAX uses, or the profile would silently never match it."""
    for key in ("quantize_inputs_of", "supported", "supported_if_constant_operand"):
        names = data.get(key) or []
        for name in ([] if isinstance(names, str) else names):
            try:
                primitives.by_name(name)
            except KeyError as error:
                raise ValueError(f"profile {path}: {key} lists {name!r}: {error.args[0]}") \
                    from None


def _integer_kernels(data: dict, path: str) -> Dict[str, str]:
    """The profile's ``integer_kernels`` (its ``why`` left out), every rule a known one."""
    from quant.qdq_placement import RULES
    kernels = {op: rule for op, rule in data.get("integer_kernels", {}).items()
               if op != "why"}
    unknown = sorted({rule for rule in kernels.values() if rule not in RULES})
    if unknown:
        raise ValueError(f"profile {path}: integer_kernels names unknown rules {unknown}; "
                         f"known: {sorted(RULES)}")
    return kernels


def _adjust_for_cpu(data: dict, kind: str) -> str:
    """Applies ``host_cpu_adjustments[kind]`` to the raw JSON; returns what it did."""
    change = data.get("host_cpu_adjustments", {}).get(kind)
    if not change:
        return ""
    for part in ("weights", "activations"):
        data[part] = {**data[part], **change.get(part, {})}
    done = ", ".join(f"{part} {key}={value}" for part in ("weights", "activations")
                     for key, value in change.get(part, {}).items())
    return f"{kind}: {done} ({change.get('why', '')})"


def load_profile(name_or_path: Union[str, Profile], target_cpu: Optional[str] = None
                 ) -> Profile:
    """A profile by name (``quant/profiles/<name>.json``) or by file path, adjusted for the
    CPU the int8 model will run on (``quant.target_cpu.target_kind(target_cpu)``)."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    path = name_or_path if name_or_path.endswith(".json") else os.path.join(
        PROFILE_DIR, name_or_path + ".json")
    if not os.path.exists(path):
        raise KeyError(f"no NPU profile {name_or_path!r}; available: {available_profiles()}")
    with open(path) as f:
        data = json.load(f)
    _check_primitive_names(data, path)
    kind = target_cpu_lib.target_kind(target_cpu)
    adjustment = _adjust_for_cpu(data, kind)
    weights = data["weights"]
    acts = data["activations"]
    supported = data.get("supported", "all")
    return Profile(
        name=data["name"], description=data.get("description", ""),
        weights=QuantSpec(weights["bits"], weights.get("symmetric", True), False,
                          weights.get("per_channel", True)),
        activations=QuantSpec(acts["bits"], acts.get("symmetric", False),
                              acts.get("unsigned", True), False),
        quantize_inputs_of=frozenset(data["quantize_inputs_of"]),
        supported=None if supported == "all" else frozenset(supported),
        supported_if_constant_operand=frozenset(data.get("supported_if_constant_operand", ())),
        constraints=dict(data.get("constraints", {})), target_cpu=kind,
        adjustment=adjustment, cpu_dependent="host_cpu_adjustments" in data,
        integer_kernels=_integer_kernels(data, path))
