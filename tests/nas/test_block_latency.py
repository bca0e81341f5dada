"""nas.block_latency: every block timed alone, summed per architecture and calibrated on
whole architectures, ranks whole architectures as the device does.

The device is ``DriftingDevice`` without drift (tests/nas/test_latency_measurement.py): a
model costs its ONNX node count times 0.1 ms, so the true latency of a whole architecture is
known without a clock, and independently of the block table (its own exported graph)."""
import itertools

import numpy as np
import pytest

from nas import architecture, block_latency
from tests.nas.helpers import tiny_library
from tests.nas.test_latency_measurement import MS_PER_NODE, DriftingDevice, kendall


def test_block_table_times_every_block_and_ranks_whole_architectures():
    library, _ = tiny_library()
    table = block_latency.measure_block_table(library, DriftingDevice(0.0), rounds=2, runs=3)
    assert sorted(table.fixed_ms) == [0, 4]                     # stem and head
    assert sorted(table.option_ms) == [(p, k) for p in range(3) for k in range(2)]
    for key, model in block_latency.block_models(library):
        measured = table.fixed_ms[key[1]] if key[0] == "fixed" else table.option_ms[key]
        assert measured == pytest.approx(len(model.graph.node) * MS_PER_NODE)
    archs = list(itertools.product(range(2), repeat=3))
    whole = [len(architecture.export_model(library, a, (12, 12, 1))[0].graph.node) * MS_PER_NODE
             for a in archs]
    predictor = block_latency.calibrated(table)().fit(archs, np.asarray(whole))
    predicted = predictor.predict(archs)
    assert kendall(predicted, whole) > 0.9
    np.testing.assert_allclose(predicted, whole, rtol=0.05)


def test_the_table_survives_json():
    table = block_latency.BlockTable({0: 0.1, 4: 0.2}, {(0, 0): 0.3, (0, 1): 0.05}, 0.8)
    again = block_latency.BlockTable.from_dict(table.as_dict())
    assert again == table and again.summed((1,)) == pytest.approx(0.35)
