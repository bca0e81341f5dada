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


def test_retime_measures_the_rows_onnx_files_again_and_keeps_accuracy(tmp_path, monkeypatch):
    """--retime reads the ONNX files a finished row's run left (float, ours, the chosen
    quantize_static model), times them again in interleaved rounds and keeps everything
    else; a row whose files are gone is refused with the command that remakes them."""
    import json
    import os

    import jax
    import numpy as np
    import pytest
    import export as export_lib
    from models import zoo
    fn, variables, _ = zoo.instantiate("vit", batch=2)
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 12, 12, 1)), np.float32)
    monkeypatch.chdir(tmp_path)
    onnx_dir = tmp_path / "runs/benchmarks/quant/vit/onnx"
    for name in ("float", "ptq_per_channel", "ort_candidates/ort_MinMax"):
        os.makedirs(os.path.dirname(onnx_dir / name), exist_ok=True)
        export_lib.to_onnx(fn, variables, x, path=str(onnx_dir / f"{name}.onnx"))
    stale = dict(row("vit", 0.8), ort_calibration={"chosen": "MinMax"},
                 latency_ms={k: {"batch1_median_ms": -1.0, "batch32_median_ms": -1.0}
                             for k in ("float", "ours_ptq_per_channel", "ort_quantize_static")})
    (tmp_path / "quant.json").write_text(json.dumps(
        dict(machine=MACHINE, smoke=False, models=[row("resnet20", 0.9), stale], skipped=[])))
    out = quant.retime(["vit"], 1, str(tmp_path))
    vit = out["models"][1]
    assert vit["accuracy"] == {"float": 0.8} and vit["latency_rounds"] == 1
    assert all(t > 0 for times in vit["latency_ms"].values() for t in times.values())
    assert out["models"][0]["latency_ms"]["float"]["batch1_median_ms"] == 1.0   # untouched
    os.remove(onnx_dir / "ptq_per_channel.onnx")
    with pytest.raises(SystemExit, match="--models vit"):
        quant.retime(["vit"], 1, str(tmp_path))
