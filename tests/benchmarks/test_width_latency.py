"""benchmarks/width_latency: which axes are narrowed, and FLOPs that agree with core.cost."""
from benchmarks.width_latency import distinct_ops, narrowed, op_flops
from core import cost
from models import zoo


def test_ops_of_resnet20_sum_to_core_cost_flops():
    ops = distinct_ops("resnet20")
    fn, variables, x = zoo.instantiate("resnet20", tiny=False, batch=1)
    counted = cost.count(fn, variables, x).matmul_flops
    ours = sum(n * op_flops(op.sig) for op, n in ops)
    assert abs(ours - counted) / counted < 1e-6
    assert sum(n for _, n in ops) == 22            # 19 convs + 2 shortcut projections + head


def test_only_prunable_axes_narrow_rounded_up_to_multiples_of_8():
    ops = {op.sig.get("cin") if op.sig.kind == "conv" else -1: op
           for op, _ in distinct_ops("resnet20") if op.sig.kind == "dense"
           or (op.sig.get("strides") == (1, 1) and op.sig.get("kernel") == (3, 3))}
    stem = next(op for op, _ in distinct_ops("resnet20")
                if op.sig.kind == "conv" and op.sig.get("cin") == 1)
    sig = narrowed(stem, 0.5)
    assert (sig.get("cin"), sig.get("cout")) == (1, 8)          # the image channel stays
    wide = ops[64]
    sig = narrowed(wide, 0.75)
    assert (sig.get("cin"), sig.get("cout")) == (48, 48)
    assert op_flops(sig) * 16 == op_flops(wide.sig) * 9
    sig = narrowed(ops[16], 0.25)
    assert (sig.get("cin"), sig.get("cout")) == (8, 8)          # 4 rounds up to one multiple
    head = ops[-1]
    sig = narrowed(head, 0.0)
    assert (sig.get("k"), sig.get("n")) == (1, 10)              # the 10 classes stay
