"""DONNA-style NAS at cluster scale: a large grid space, long distillation, 500 architectures.

Run:  python run.py --exp=nas_fmnist_cluster --workdir=/shared/runs/nas_cluster
(every process of a GPU/TPU job runs this same command; run.py starts JAX's distributed
runtime from the cluster's environment: see the README's cluster section)
Students of one structure are stacked and vmapped (``distill.batching = "vmap"``) and their
member axis is sharded over every device of the mesh; 24 choices per block from the grid
below (all five block types, depth 1-4, kernels 3/5/7, five activations, SE on/off) give 216
students. Not run here: on 2 CPU cores it would take days. Expected on 8 GPUs: a few hours,
dominated by distillation.
"""
from nas.configs import nas_fmnist


def get_config():
    c = nas_fmnist.get_config()
    c.show_progress = False
    c.space.choices = None
    c.space.grid = dict(
        type=["inverted_residual", "fused_ir", "plain", "dw_separable", "mixer"],
        depth=[1, 2, 3, 4], kernel=[3, 5, 7], expansion=[2.0, 3.0, 4.0, 6.0],
        width=[0.5, 0.75, 1.0, 1.5], activation=["relu", "relu6", "hardswish", "silu", "gelu"],
        se=[False, True])
    c.space.per_block = 24
    c.distill.update(dict(steps=5000, batch_size=256, learning_rate=1e-3, warmup_steps=250,
                          checkpoint_every=500, log_every=100, eval_batches=10,
                          batching="vmap", max_members=0))
    c.measure.update(dict(architectures=500, latency_architectures=300, eval_limit=5000,
                          rounds=10, runs=30, warmup=10))
    c.predictor.update(dict(hidden=64, embed_dim=32, layers=4, steps=4000))
    c.search.update(dict(population=256, generations=100, measure_front=10))
    c.finetune.update(dict(steps=3000, batch_size=256))
    return c
