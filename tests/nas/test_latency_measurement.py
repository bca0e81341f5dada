"""The NAS's latency labels: interleaved rounds against load drift, two passes for a
test-retest Kendall tau, p10 as the target.

The device is played by ``DriftingDevice``, a runner (like tests/export/fake_device.py plays
a remote device, but in process and on a simulated clock) whose every timed run costs the
model's true cost (proportional to its ONNX node count) plus a load term that grows with
the simulated wall time, plus a little seeded noise: what a shared machine does to models
timed one after another.
"""
import types

import numpy as np
import onnx
from onnx import TensorProto, helper
from scipy import stats

from export.runners import Runner, summarize
from nas import architecture, predictor_fitting

MS_PER_NODE = 0.1


def chain_model(nodes: int) -> onnx.ModelProto:
    """A real ONNX model of ``nodes`` Relu nodes in a chain."""
    names = ["x"] + [f"h{i}" for i in range(nodes - 1)] + ["y"]
    graph = helper.make_graph(
        [helper.make_node("Relu", [a], [b]) for a, b in zip(names, names[1:])], f"chain{nodes}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph)


class DriftingDevice(Runner):
    """Every run (warm-up included) advances the simulated clock by one tick and takes
    ``nodes * MS_PER_NODE + drift_ms_per_tick * clock + noise`` ms; it records, per model,
    the samples of each call in call order."""
    name = "drifting-fake"

    def __init__(self, drift_ms_per_tick: float, noise_ms: float = 0.0, seed: int = 0,
                 warmup: int = 1, runs: int = 5):
        self.drift, self.noise, self.warmup, self.runs = drift_ms_per_tick, noise_ms, warmup, runs
        self.rng, self.clock = np.random.default_rng(seed), 0
        self.calls = []                           # (model node count, samples) in call order

    def _one_run(self, nodes: int) -> float:
        self.clock += 1
        return (nodes * MS_PER_NODE + self.drift * self.clock
                + self.noise * float(self.rng.uniform()))

    def measure(self, model, batch=1, inputs=None, runs=None, warmup=None):
        nodes = len(model.graph.node)
        for _ in range(self.warmup if warmup is None else warmup):
            self._one_run(nodes)
        samples = [self._one_run(nodes) for _ in range(self.runs if runs is None else runs)]
        self.calls.append((nodes, samples))
        return summarize(self.name, samples)


def kendall(a, b) -> float:
    return float(stats.kendalltau(a, b)[0])


def test_interleaved_rounds_rank_by_true_cost_where_sequential_timing_does_not():
    # Costliest first, so the growing load works against the true order.
    nodes = [7, 6, 5, 4, 3, 2]
    models = [chain_model(n) for n in nodes]
    true_ms = [n * MS_PER_NODE for n in nodes]
    rounds, runs = 10, 5
    device = DriftingDevice(drift_ms_per_tick=0.005, noise_ms=0.01)
    timed = architecture.measure_latencies(device, models, rounds, runs, seed=3)
    assert np.isclose(kendall([t["latency_ms"] for t in timed], true_ms), 1.0, atol=1e-12)

    # The same drift, each model timed in one go with as many runs (the old way).
    sequential_device = DriftingDevice(drift_ms_per_tick=0.005, noise_ms=0.01)
    sequential = [np.percentile(sequential_device.measure(m, runs=2 * rounds * runs)
                                .samples_ms, 10) for m in models]
    assert kendall(sequential, true_ms) < 0

    # Two passes of `rounds` rounds over every model; the second in a shuffled order.
    order = [n for n, _ in device.calls]
    n = len(models)
    assert len(order) == 2 * rounds * n
    first_pass, second_pass = order[:n], order[rounds * n:rounds * n + n]
    assert first_pass == nodes
    assert sorted(second_pass) == sorted(nodes) and second_pass != first_pass
    for r in range(rounds):        # every round of a pass takes the models in its order
        assert order[r * n:(r + 1) * n] == first_pass
        assert order[(rounds + r) * n:(rounds + r + 1) * n] == second_pass


def samples_by_model(calls, start: int, stop: int) -> dict:
    """Node count -> the pooled samples of calls[start:stop] (models have distinct counts)."""
    out = {}
    for nodes, samples in calls[start:stop]:
        out.setdefault(nodes, []).extend(samples)
    return out


def test_retest_tau_and_statistics_over_exactly_the_timed_architectures():
    rows = [{"arch": [k], "accuracy": 0.5} for k in range(8)]
    node_counts = {0: 4, 2: 5, 3: 3, 5: 6, 7: 2}          # rows that get a latency
    exported = {k: (chain_model(n), {"onnx_ops": n}) for k, n in node_counts.items()}
    rounds, runs = 3, 4
    device = DriftingDevice(drift_ms_per_tick=0.0005, noise_ms=0.6, seed=7)
    predictor_fitting.attach_latencies(rows, exported, device,
                                       types.SimpleNamespace(rounds=rounds, runs=runs),
                                       seed=1, log=lambda *_: None)

    assert [k for k, r in enumerate(rows) if "latency_ms" in r] == sorted(node_counts)
    # The reference: the samples the device handed out, per model and pass.
    n = len(node_counts)
    assert len(device.calls) == 2 * rounds * n
    first = samples_by_model(device.calls, 0, rounds * n)
    second = samples_by_model(device.calls, rounds * n, 2 * rounds * n)
    for k, nodes in node_counts.items():
        samples, row = first[nodes] + second[nodes], rows[k]
        assert row["latency_runs"] == len(samples) == 2 * rounds * runs
        assert np.isclose(row["latency_p10_ms"], np.percentile(samples, 10), rtol=1e-12)
        assert np.isclose(row["latency_median_ms"], np.median(samples), rtol=1e-12)
        assert np.isclose(row["latency_p90_ms"], np.percentile(samples, 90), rtol=1e-12)
        assert row["latency_ms"] == row["latency_p10_ms"]
        assert np.allclose(row["latency_pass_p10_ms"], [np.percentile(first[nodes], 10),
                                                        np.percentile(second[nodes], 10)],
                           rtol=1e-12)
        assert row["onnx_ops"] == nodes

    timed = [node_counts[k] for k in sorted(node_counts)]
    expected = kendall([np.percentile(first[m], 10) for m in timed],
                       [np.percentile(second[m], 10) for m in timed])
    tau = architecture.retest_tau(rows)
    assert np.isclose(tau, expected, atol=1e-12)
    assert -1.0 < tau < 1.0      # the noise reorders some: the figure is not trivially 1
    assert architecture.retest_tau(rows[:1]) is None     # one timed row: no ranking
