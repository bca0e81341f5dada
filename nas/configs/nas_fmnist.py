"""DONNA-style NAS on the Fashion-MNIST ResNet-20 teacher: a small space, end to end.

Run:  python run.py --exp=nas_fmnist            (benchmarks/nas.py runs it and adds baselines)
Needs the trained teacher (python run.py --exp=train_teacher; cached, reused here).
Expected (estimated from the stages' earlier timings, not yet run whole at these settings):
about 2.5 hours on 2 CPU cores: 63 students in 35 groups, 800 steps of batch 64 each
(~55 min; 200 steps of batch 32 left them at noise-to-signal 0.05-0.68); 160 architectures
sampled within the latency range, each recalibrated (30 forward passes) and evaluated on
2000 validation images (~15 min), 60 of them exported once and timed side by side (2 passes
of 10 interleaved rounds of 20 runs, 400 samples each; latency target: their p10) (~15 min);
25 short fine-tunes of 200 steps (~15 min); predictors, NSGA-II, the front on the 10k test
images, the chosen one recalibrated and fine-tuned (1500 steps at each of 2 learning rates,
~20 min); the search again for LiteRT and without the int8 objective (~15 min).
Outputs in runs/nas_fmnist: results.json, pareto.png, distill/ (students, resumable).
"""
import ml_collections

from core.configs import train_teacher


def get_config():
    c = ml_collections.ConfigDict()
    c.program = "experiments.nas_search"
    c.seed = 0
    c.show_progress = True
    c.device = "ort-cpu-1t"
    c.teacher_source = "trained"     # "untrained": the zoo model at init (smoke tests)
    c.teacher = train_teacher.get_config()
    c.blocks = "auto"                  # or a list of module names where blocks start
    c.space = ml_collections.ConfigDict()
    c.space.positions = "auto"         # every feature-map -> feature-map block
    # The teacher's own block at a narrower inner width, started from its highest-L1
    # channels (nas.teacher_init): the cheap teacher-like options DONNA's space lacked.
    # Students of other types end like the teacher block (end="relu": the projected input
    # added, then ReLU); the inverted residuals had ended linearly, without a shortcut at
    # stride 2.
    c.space.choices = [
        dict(type="plain", depth=2, kernel=3, width=0.5, activation="relu"),
        dict(type="plain", depth=2, kernel=3, width=0.75, activation="relu"),
        dict(type="inverted_residual", depth=1, kernel=3, expansion=3.0, activation="relu6",
             end="relu"),
        dict(type="dw_separable", depth=2, kernel=5, width=1.0, activation="hardswish",
             se=True),
        dict(type="plain", depth=1, kernel=3, width=1.0, activation="relu"),
        dict(type="fused_ir", depth=1, kernel=3, expansion=2.0, activation="silu", end="relu"),
        dict(type="mixer", depth=1, width=0.25, expansion=2.0, activation="gelu"),
    ]
    c.space.grid = None
    c.space.per_block = 0
    c.distill = ml_collections.ConfigDict(dict(
        steps=800, batch_size=64, learning_rate=2e-3, warmup_steps=50, weight_decay=0.0,
        seed=0, augment=False, log_every=25, checkpoint_every=100, eval_batches=4,
        eval_batch_size=250, max_members=0, batching="auto",
        init_from_teacher=True))     # where shapes allow (every plain d2 k3 student)
    # The predictors' target: validation accuracy with the students' BatchNorm recalibrated
    # on the assembled network's own activations (30 forward passes, per block compiled
    # once), of architectures sampled within [0.35, 1.0] of the teacher's summed block
    # latency; 25 of them also fine-tuned 200 steps to check that this target ranks them as
    # training does (nas.finetuned_targets).
    c.measure = ml_collections.ConfigDict(dict(
        architectures=160, latency_architectures=60, eval_limit=2000,
        rounds=10, runs=20, warmup=5,    # runs per model per interleaved round, two passes
        target="recalibrated", recalibration_batches=30, latency_range=[0.35, 1.0],
        finetune_architectures=25, finetune_steps=200, finetune_learning_rate=0.02))
    c.predictor = ml_collections.ConfigDict(dict(
        train_fraction=0.7, splits=20, hidden=32, embed_dim=16, layers=3, steps=1500,
        learning_rate=3e-3))        # judged over `splits` random train/test splits
    c.search = ml_collections.ConfigDict(dict(
        population=64, generations=40, latency_budget=0.7, measure_front=5,
        int8_profile="npu_int8_per_tensor",   # third objective: quant.lint penalties ("" off)
        # The latency constraint: every block option timed alone on the device, summed and
        # calibrated on the measured architectures (nas.block_latency); "gnn": learned.
        latency_predictor="block_table",
        # A device-specific search (experiments/nas_devices.py): the same students and
        # accuracy predictor, each device's own latency table and front; each device's
        # choice at equal predicted accuracy timed on every device. The first is c.device.
        devices=["ort-cpu-1t", "litert-cpu-1t"]))
    # One recipe for the chosen architecture and every baseline of benchmarks/nas.py
    # (nas.finetune): the teacher's optimizer (SGD, Nesterov, weight decay), KD from the
    # teacher, BatchNorm trained (students'; after recalibration), augmentation; each
    # learning rate trained for `steps`, the best on validation kept.
    c.finetune = ml_collections.ConfigDict(dict(
        steps=1500, batch_size=128, optimizer="sgd", learning_rates=[0.02, 0.1],
        learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
        warmup_steps=150, temperature=4.0, alpha=0.9, augment=True,
        recalibration_batches=50, log_every=50, checkpoint_every=250))
    return c
