"""MediaPipe selfie segmentation (real, pretrained, 256x256) pruned 2x by distillation on real images.

Run:  python run.py --exp=prune_selfie_2x
Expected: about 15 minutes on 2 CPU cores, no teacher training: the original model
(fetched by scripts/setup.sh from the mediapipe wheel) is the teacher. Learned gates under a
FLOPs budget of 0.5 that falls progressively (budget_ramp), distillation of the mask logits
from the original on augmented real images (no labels), fine-tune, ONNX export, int8 (ours
and onnxruntime's quantize_static), one-thread onnxruntime latency, mask IoU against the
original on the 324 held-out real images; writes result.json/result.md and outputs.png.

The default experiment (``python run.py``). Not yet good: this small, already efficient
model (106k parameters) is fragile to channel removal. Removing the 25% lowest-L1 channels
of one group alone drops the mask IoU to 0.28 for 5 of its 25 groups (L1 ranks are no
better than random there), one channel of one group to 0.47; least-squares reconstruction
(``pruning.reconstruct``) repairs single removals (0.33 -> 0.91) but not 25% of every group
(0.29 -> 0.33), and after gate training it undoes what the gates adapted (0.73 -> 0.49), so
it is off here. Measured with these settings (2026-12-02, 11 min, original and pruned timed
in interleaved rounds; benchmarks/results/prune_selfie_2x.json): 1.56x fewer FLOPs
(200.6 -> 129.0 M), mask IoU against the original 0.729 after pruning and 0.760 after
fine-tuning (the goal is 0.95 at 2x), 0.97x the original's speed at batch 1 (the pruned
convs are no faster in onnxruntime: issue 20); int8 of the pruned model 0.730 (ours) and
0.756 (quantize_static), both slower than float on this AMD EPYC although it has
AVX-512 VNNI. The same settings on the code of 608e6eb gave 0.377 / 0.410; what changed
the outcome is not isolated yet. Rerun on cb78e13 (2026-12-03, published; gates only on
groups wider than 8, timed in onnxruntime and LiteRT, 19 min beside a fuzz run): 1.57x fewer
FLOPs, IoU 0.292 / 0.336, 0.96x the original's speed in onnxruntime and 1.36x in LiteRT.
The fidelity of this job swings from run to run of nearly the same code (0.34-0.76).

Why fine-tuning barely helps (measured 2026-12-03 on the unpruned model): distilled from
itself (student == teacher, loss 0.089, gradient norm 9e-4) it walks away: AdamW 3e-4 took
the loss to 0.82 and the held-out IoU to 0.69 in 30 steps, SGD 0.01 to 0.62. The gradient
is right (eager == jit to 7e-6; a step of norm 1e-3 lowers the loss, 1e-2 raises it): the
BatchNorm-folded weights (RMS 0.028-8.7 across tensors) make the loss very sharp, and 2%
weight noise takes the logits from +-160 to +-734. Repairing a 2%-noise model (IoU 0.83) in
60 steps: AdamW 3e-5 0.87, weight-normalised AdamW 1e-4 0.88, RMS-relative Adam 1e-3 0.50.
"""
import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.program = "experiments.real_model_pruning"
    # Trained and pruned on the logits before the final sigmoid (tensor 'segment'); the
    # sigmoid is the head, applied for fidelity and in the exported model.
    config.model = ml_collections.ConfigDict(dict(
        source="tflite", name="selfie_segmentation", outputs=["segment"], head="sigmoid"))
    config.fidelity = "mask_iou"
    config.device = "ort-cpu-1t"
    # A second runner: both models converted to .tflite and timed in LiteRT (XNNPACK) where
    # TensorFlow (requirements-tflite.txt, installed by scripts/setup.sh) converts; '' skips.
    config.litert_device = "litert-cpu-1t"
    # ONNX parity of the deployed (sigmoid) output, relative to its scale 1. The logits
    # reach +-160 (+-460 after reconstruction): float32 noise of 1e-6 of that, through the
    # sigmoid's slope 1/4 near 0.5, moves a probability by up to 1.2e-4 while the logits
    # agree to 5e-6 relative (measured on a held-out image).
    config.export_rtol = 1e-3
    config.publish = True       # result into benchmarks/results, only from runs/<experiment>
    # text_overlay: the share of training crops with printed words drawn on them
    # (data.text_overlay; for a text detector, whose real images hold little text).
    config.data = ml_collections.ConfigDict(dict(train_images=0, eval_images=0,
                                                 crop_margin=32, text_overlay=0.0))
    # int8 of the pruned model, ours and onnxruntime's quantize_static side by side.
    config.int8 = ml_collections.ConfigDict(dict(enabled=True, calibration_images=64,
                                                 validation_images=32))
    # Least-squares reconstruction of every layer against the original after the channels
    # go (pruning.reconstruct) repairs one-shot pruning (one removed channel of group 19:
    # IoU 0.33 -> 0.91, tests/pruning/test_reconstruct.py) but undoes what gate training
    # adapted: after these gates it took the IoU from 0.729 to 0.492 (measured), so it is
    # off here.
    config.reconstruct = ml_collections.ConfigDict(dict(enabled=False, images=32,
                                                        batch_size=16, ridge=0.01))
    config.gates = gates = ml_collections.ConfigDict()
    gates.steps = 300
    gates.batch_size = 8
    gates.seed = 0
    gates.target = "flops"
    gates.target_ratio = 0.5
    # Not stepped down to the budget after rounding (gates.fit_budget): at 0.5 that left
    # mask IoU 0.000 after pruning, and trained at 0.64 with it 0.378 (measured 2026-12-03);
    # the rounded keep-set of the 0.5 gates (1.56x) keeps 0.729.
    gates.fit_budget = False
    gates.target_ms = 0.0
    gates.penalty = 5.0
    gates.budget_ramp = 0.8         # at the target from step 0, every gate fell at once
    gates.gate_learning_rate = 0.03   # 0.05: every logit crossed zero within 25 steps (budget 1.74 -> 0.95)
    gates.weight_learning_rate = 1e-3  # SGD 0.01: IoU 0.59 after 12 steps with no channel gone
    gates.init_logit = 3.0
    gates.init_spread = 2.0
    gates.noise_start = 0.3      # 1.0 drops ~6% of channels at random: IoU 0.08-0.3 (measured)
    # Widths in multiples of 8, not the device's step (gates.multiple = 0: 16 on AVX-512).
    # At 16 the narrowest model keeps 0.67 of the FLOPs (7 of 25 groups are 8-16 channels
    # wide at full resolution), and a 0.75 budget has to come from the wide layers alone:
    # mask IoU 0.024 after pruning, 0.002 after the fine-tune (measured 2026-12-03).
    gates.multiple = 8
    gates.min_keep = 8
    gates.log_every = 25
    gates.checkpoint_every = 100
    config.finetune = ft = ml_collections.ConfigDict()
    ft.seed = 1
    ft.batch_size = 8
    ft.epochs = 0.0
    ft.steps = 300
    ft.optimizer = "adamw"
    ft.learning_rate = 3e-5     # 60 steps from a 2x keep-set: 3e-5 IoU 0.28 -> 0.32; 3e-4 -> 0.01 (SGD 1e-3 -> 0.18)
    ft.grad_clip_norm = 1.0
    ft.momentum = 0.9
    ft.nesterov = True
    ft.weight_decay = 0.0
    ft.warmup_steps = 20
    ft.augment = True
    ft.log_every = 25
    ft.eval_every_epochs = 0
    ft.checkpoint_every = 100
    return config
