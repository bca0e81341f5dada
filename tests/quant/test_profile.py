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
