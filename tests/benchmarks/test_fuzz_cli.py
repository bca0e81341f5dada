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


def test_a_saved_failing_model_replays_with_every_check(tmp_path):
    """A long run's draw cannot be replayed from its seed, so failing models are pickled
    beside the result; --replay checks them again (here: a model that passes)."""
    from hypothesis import HealthCheck, Phase, given, seed, settings

    from tests.fuzz.architectures import architectures
    drawn = []

    @seed(3)
    @settings(max_examples=1, database=None, deadline=None, phases=(Phase.generate,),
              suppress_health_check=list(HealthCheck))
    @given(architectures())
    def draw(arch):
        drawn.append(arch)

    draw()
    out = str(tmp_path / "fuzz.json")
    fuzz.save_failing(drawn[0], 7, out)
    path = str(tmp_path / "fuzz_failures" / "model7.pkl")
    assert fuzz.main(["--replay", path]) == {path: "ok"}
