"""benchmarks/quant.py adds or refreshes one model's row without dropping the others."""
from benchmarks import quant

MACHINE = dict(cpu="cpu", cores=2, int8_flags=["avx2"], onnxruntime="1", load_average_at_start=1.0)


def row(name, acc):
    return dict(model=name, experiment=name, accuracy={"float": acc}, onnx_accuracy={},
                latency_ms={"float": {"batch1_median_ms": 1.0}}, parity={})


def test_rows_of_this_run_replace_the_same_models_and_keep_the_others():
    previous = dict(machine=dict(MACHINE, cpu="old"), smoke=False,
                    models=[row("resnet20", 0.9), row("vit", 0.5)], skipped=["mobilenetv2"])
    current = dict(machine=MACHINE, smoke=False, models=[row("vit", 0.8), row("mobilenetv2", 0.7)],
                   skipped=["pruned_resnet20"])
    out = quant.merged(previous, current, smoke=False)
    assert [r["experiment"] for r in out["models"]] == ["resnet20", "vit", "mobilenetv2"]
    assert out["models"][1]["accuracy"]["float"] == 0.8
    assert out["models"][0]["machine"]["cpu"] == "old"        # measured under its own machine
    assert out["skipped"] == ["pruned_resnet20"]
    assert "## vit" in quant.markdown(out)


def test_smoke_results_never_mix_with_real_ones():
    previous = dict(machine=MACHINE, smoke=True, models=[row("resnet20", 0.1)], skipped=[])
    current = dict(machine=MACHINE, smoke=False, models=[row("vit", 0.8)], skipped=[])
    assert [r["experiment"] for r in quant.merged(previous, current, False)["models"]] == ["vit"]
