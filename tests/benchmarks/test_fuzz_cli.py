"""benchmarks/fuzz.py as a command: ``--only`` checks just the models with the given tags
(how a failure class is rechecked after its fix), and the result says which filter ran."""
import json

import pytest

from benchmarks import fuzz


@pytest.mark.slow
def test_only_checks_models_with_every_given_tag(tmp_path):
    out = str(tmp_path / "fuzz.json")
    result = fuzz.main(["--n", "12", "--only", "dtype:bfloat16", "--export-every", "1000",
                        "--out", out])
    with open(out) as f:
        written = json.load(f)
    assert written["only"] == "dtype:bfloat16"
    assert 0 < result["models"] < 12, "some of the 12 draws are float32 and are skipped"
    assert result["features"]["dtype:bfloat16"] == result["models"]
    assert result["ok"] + result["mismatches"] + result["crashes"] + result["unsupported"] \
        == result["models"]
