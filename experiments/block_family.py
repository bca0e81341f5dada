"""The blocks_<model> experiments: a family of models, each one block smaller than the
previous, chosen for one device (``pruning.block_family``), each member fine-tuned by
distillation, exported with a parity check and measured.

The chosen removals are saved (family.json, keyed by the settings that choose them), so a
rerun goes straight to fine-tuning; fine-tunes checkpoint and resume under member<k>/.
"""
import dataclasses
import glob
import json
import os
import shutil
import time

import ml_collections

import experiments
from core import config as config_lib, losses, train as train_lib
from experiments import preamble
from export.measure import export_and_measure
from pruning import blocks as blocks_lib
from pruning.block_family import (BlockScore, FamilySettings, LatencyProbe, QualityProbe,
                                  build_family)


def _table(rows) -> str:
    header = ("| blocks removed | last removed | test acc | acc after KD | FLOPs (M) | "
              "params (k) | ORT b1 (ms) | ORT b32 (ms) |\n|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['blocks_removed']} | {r['last_removed'] or '-'} | "
             f"{r['accuracy_before_finetune'] * 100:.2f} | "
             f"{r['accuracy_after_finetune'] * 100:.2f} | {r['flops'] / 1e6:.2f} | "
             f"{r['params'] / 1e3:.1f} | {r['batch1_median_ms']:.3f} | "
             f"{r['batch32_median_ms']:.2f} |" for r in rows]
    return header + "\n".join(lines)


def _finetune(member, dataset, config, workdir, teacher_fn):
    if not config.finetune.get("steps", 0):
        return member.variables, None
    tuned = train_lib.train(train_lib.frozen_model(member.fn, member.variables), dataset,
                            config.finetune, workdir,
                            loss_fn=losses.distillation_from(
                                teacher_fn, config.kd.kd_temperature, config.kd.kd_alpha),
                            show_progress=False)
    return tuned["variables"], tuned["test"]["accuracy"]


def _family_key(config, teacher_key: str) -> str:
    return config_lib.config_hash(ml_collections.ConfigDict(
        {"teacher": teacher_key, "device": config.device, "blocks": config.blocks.to_dict(),
         "family": config.family.to_dict()}))


def _save_family(workdir, config, teacher_key, family):
    """The chosen removals, so a resumed run goes straight to fine-tuning."""
    plain = [{"removed": [b.id for b in removed], "labels": [b.label for b in removed],
              "choice": dataclasses.asdict(choice) if choice else None}
             for removed, choice in family]
    with open(os.path.join(workdir, "family.json"), "w") as f:
        json.dump({"key": _family_key(config, teacher_key), "family": plain}, f, indent=1)


def _cached_family(workdir, config, teacher_key, analysis):
    path = os.path.join(workdir, "family.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    if saved["key"] != _family_key(config, teacher_key):
        return None
    family = []
    for entry in saved["family"]:
        removed = analysis.by_id(entry["removed"])     # ids are deterministic per model
        if [b.label for b in removed] != entry["labels"]:
            return None
        family.append((removed, BlockScore(**entry["choice"]) if entry["choice"] else None))
    print(f"reusing the family chosen by a previous run ({path})")
    return family


def _analyse(config, teacher):
    """The removable blocks with their costs, printed."""
    analysis = blocks_lib.find_blocks(teacher.fn, teacher.variables, teacher.example,
                                      module_paths=tuple(config.blocks.module_paths),
                                      automatic=config.blocks.automatic)
    analysis = blocks_lib.with_costs(teacher.fn, teacher.variables, teacher.example, analysis)
    print(f"{len(analysis.blocks)} removable blocks; {len(analysis.rejected)} candidates "
          f"never offered; teacher test accuracy {teacher.summary['test_accuracy']:.4f}")
    for block in analysis.blocks:
        print(f"  block {block.id:3d} {block.kind:13s} {block.label:50s} "
              f"{block.flops / 1e6:8.3f} MFLOPs  {block.source_lines[0]}")
    for what, why in analysis.rejected:
        print(f"  not offered: {what}: {why}")
    return analysis


def _choose_family(config, teacher, analysis, settings, workdir):
    """The family of a previous run with the same settings, or a freshly scored one."""
    family = _cached_family(workdir, config, teacher.summary["key"], analysis)
    if family is None:
        quality_probe = QualityProbe.from_dataset(
            teacher.dataset, teacher.teacher_fn, config.family.score_examples,
            config.kd.kd_temperature)
        latency_probe = LatencyProbe(config.device, config.family.latency_source,
                                     config.family.latency_batch, config.family.latency_runs,
                                     os.path.join(workdir, "scoring"),
                                     config.family.get("latency_table_path"),
                                     config.family.get("latency_rounds", 5))
        family = build_family(teacher.fn, teacher.variables, teacher.example, analysis,
                              settings, quality_probe, latency_probe)
        # A new family: fine-tune checkpoints of an earlier one must not be resumed.
        for stale in glob.glob(os.path.join(workdir, "member*")):
            shutil.rmtree(stale)
    _save_family(workdir, config, teacher.summary["key"], family)
    return family


def _member_row(config, teacher, analysis, k, removed, choice, workdir):
    """Member ``k`` (k blocks removed) evaluated, fine-tuned, exported and measured."""
    member = blocks_lib.remove_blocks(teacher.fn, teacher.variables, teacher.example,
                                      blocks=removed, analysis=analysis)
    if k == 0:
        accuracy, tuned_vars, tuned_acc = (teacher.summary["test_accuracy"],
                                           member.variables, None)
    else:
        accuracy = train_lib.evaluate(member.fn, member.variables, teacher.dataset,
                                      "test")["accuracy"]
        tuned_vars, tuned_acc = _finetune(member, teacher.dataset, config,
                                          os.path.join(workdir, f"member{k}", "finetune"),
                                          teacher.teacher_fn)
    measured = export_and_measure(member.fn, tuned_vars, teacher.example,
                                  os.path.join(workdir, "onnx", f"member{k}.onnx"),
                                  config.device, runs=config.measure_runs)
    row = {"blocks_removed": k, "removed": [b.label for b in removed],
           "removed_ids": [b.id for b in removed],
           "last_removed": removed[-1].label if removed else None,
           "choice": dataclasses.asdict(choice) if choice else None,
           "accuracy_before_finetune": accuracy,
           "accuracy_after_finetune": tuned_acc if tuned_acc is not None else accuracy,
           "removed_params": member.removed_params, **measured}
    print(f"member {k}: {k} blocks removed, test accuracy {accuracy:.4f} -> "
          f"{row['accuracy_after_finetune']:.4f} after KD, "
          f"{measured['flops'] / 1e6:.2f} MFLOPs, {measured['batch1_median_ms']:.3f} ms")
    return row


def main(config, workdir):
    start = time.time()
    teacher = preamble.prepare(config.teacher)
    settings = FamilySettings.from_config(config.family)
    analysis = _analyse(config, teacher)
    family = _choose_family(config, teacher, analysis, settings, workdir)
    rows = [_member_row(config, teacher, analysis, k, removed, choice, workdir)
            for k, (removed, choice) in enumerate(family)]
    result = {"experiment": config.get("experiment_name", "blocks"),
              "model": config.teacher.model, "teacher": teacher.summary["key"],
              "device": config.device, "settings": dataclasses.asdict(settings),
              "finetune_steps": int(config.finetune.get("steps", 0)),
              "latency_source": config.family.latency_source,
              "blocks": [b.as_dict() for b in analysis.blocks],
              "rejected": [list(r) for r in analysis.rejected],
              "family": rows, "wall_seconds": time.time() - start}
    text = _table(rows)
    print(text)
    experiments.write_result(workdir, result, text)
    return result
