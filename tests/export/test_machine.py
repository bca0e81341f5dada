"""The machine phrase every result's markdown writes: the load as result files of any age
stored it (a triple, one number, missing) and the package versions asked for, in order."""
from export import machine


def test_the_phrase_takes_the_one_minute_load_from_a_triple_or_a_number():
    base = {"cpu": "AMD EPYC", "cores": 2, "onnxruntime": "1.32.0", "jax": "0.10.2"}
    assert machine.line({**base, "load_average_at_start": (1.43, 1.79, 2.01)}, "jax") == (
        "AMD EPYC, 2 cores (shared; load average 1.4 at start), jax 0.10.2")
    assert machine.line({**base, "load_average_at_start": 0.56}) == (
        "AMD EPYC, 2 cores (shared; load average 0.6 at start)")
    assert machine.line({**base, "load_average_at_start": None}, "onnxruntime", "torch") == (
        "AMD EPYC, 2 cores (shared; load average unknown at start), onnxruntime 1.32.0, "
        "torch None")


def test_the_phrase_has_the_load_at_the_end_when_recorded():
    info = {"cpu": "x", "cores": 4, "load_average_at_start": [2.0, 1, 1],
            "load_average_at_end": [3.25, 1, 1]}
    assert machine.line(info) == "x, 4 cores (shared; load average 2.0 at start, 3.2 at end)"


def test_the_phrase_reads_what_describe_records():
    phrase = machine.line(machine.describe(), "jax")
    assert " cores (shared; load average " in phrase and phrase.endswith(
        f"jax {machine.describe()['jax']}")
