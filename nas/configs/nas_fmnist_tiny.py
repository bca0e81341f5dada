"""NAS pipeline smoke test: untrained tiny ResNet, 2 choices per block, a few steps each.

Run:  python run.py --exp=nas_fmnist_tiny
Expected: 2-4 minutes on 2 shared CPU cores (mostly compilation and ONNX export); the
numbers are meaningless, it checks that every stage runs and writes its outputs.
"""
from nas.configs import nas_fmnist


def get_config():
    c = nas_fmnist.get_config()
    c.show_progress = False
    c.teacher.tiny = True
    c.teacher.data_limit = 200
    c.teacher_source = "untrained"
    c.space.choices = [c.space.choices[0], c.space.choices[2]]
    c.distill.update(dict(steps=3, batch_size=16, log_every=1, checkpoint_every=2,
                          eval_batches=1, eval_batch_size=50, warmup_steps=1))
    c.measure.update(dict(architectures=10, latency_architectures=10, eval_limit=100, rounds=2,
                          runs=3, warmup=1, recalibration_batches=2, recalibration_batch_size=16,
                          latency_range=[0.0, 10.0], finetune_architectures=3,
                          finetune_steps=2))
    c.predictor.update(dict(steps=30, hidden=8, embed_dim=4, layers=1, splits=3))
    c.search.update(dict(population=8, generations=3, measure_front=1, latency_budget=2.0))
    c.finetune.update(dict(steps=2, batch_size=16, log_every=1, checkpoint_every=2,
                           warmup_steps=0, learning_rates=[0.01], recalibration_batches=2))
    return c
