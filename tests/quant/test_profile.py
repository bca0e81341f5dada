"""Profiles are data: an op name no JAX primitive has is refused when the profile loads,
instead of never matching."""
import json
import os

import pytest

from quant.profile import PROFILE_DIR, load_profile


def test_a_profile_naming_no_real_primitive_is_refused(tmp_path):
    with open(os.path.join(PROFILE_DIR, "npu_w4a8.json")) as f:
        data = json.load(f)
    data["supported"] = data["supported"] + ["copy_p"]
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="copy_p.*did you mean"):
        load_profile(str(path))


def test_integer_kernels_are_read_and_an_unknown_rule_is_refused(tmp_path):
    """The onnxruntime profile says which ONNX ops run integer kernels (its ``why`` is
    documentation, not an op); a rule name the placement does not know is refused."""
    kernels = load_profile("ort_cpu_int8").integer_kernels
    assert kernels["MatMul"] == "inputs_dequantized" and "why" not in kernels
    assert load_profile("npu_w4a8").integer_kernels == {}     # an NPU compiler decides
    with open(os.path.join(PROFILE_DIR, "ort_cpu_int8.json")) as f:
        data = json.load(f)
    data["integer_kernels"]["Softmax"] = "sometimes"
    path = tmp_path / "bad_rule.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="sometimes"):
        load_profile(str(path))
