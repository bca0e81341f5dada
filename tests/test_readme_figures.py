"""The README quotes only what benchmarks/results/ holds (issue 21, item 6).

Every README table and figure that comes from a result file sits in a region that
``benchmarks/render_readme.py`` renders, or is listed in its ``PROSE_FIGURES``; these tests
fail when either differs from the files, and show on edited copies of the files that the
check does fail."""
import json
import os
import re
import shutil

import pytest

from benchmarks import render_readme

with open(render_readme.README) as _f:
    README_TEXT = _f.read()


def _copy_results(tmp_path):
    target = tmp_path / "results"
    target.mkdir()
    for name in render_readme._all_files():
        shutil.copy(os.path.join(render_readme.RESULTS, f"{name}.json"), target)
    return target


def _edit(results_dir, name, change):
    path = results_dir / f"{name}.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_every_region_matches_what_its_result_files_render():
    problems = render_readme.region_differences(README_TEXT)
    assert not problems, ("README.md is stale; run python benchmarks/render_readme.py\n"
                          + "\n\n".join(problems))


def test_figures_in_prose_match_their_result_files():
    problems = render_readme.prose_differences(README_TEXT)
    assert not problems, "\n".join(problems)


def test_every_renderer_has_its_region_and_every_region_a_renderer():
    names = [m.group("name") for m in render_readme.REGION.finditer(README_TEXT)]
    assert sorted(names) == sorted(render_readme.REGIONS)
    assert len(names) == len(set(names)), "a region appears twice"


def _showcase_rows(text):
    """The showcase table's rows, parsed from the README independently of the renderer."""
    body = re.search(r"<!-- results:prune_resnet20_2x -->\n(.*?)<!-- /results -->", text,
                     re.S).group(1)
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in ("teacher", "pruned + fine-tuned"):
            rows[cells[0]] = [float(c) for c in cells[1:]]
    return rows


def test_showcase_table_agrees_with_the_raw_result_values():
    """Independent of the renderer: each printed cell is the JSON value to its printed
    precision (half a unit of the last digit)."""
    with open(os.path.join(render_readme.RESULTS, "prune_resnet20_2x.json")) as f:
        result = json.load(f)
    rows = _showcase_rows(README_TEXT)
    for name, key in (("teacher", "before"), ("pruned + fine-tuned", "after")):
        m = result[key]
        expected = [m["accuracy"] * 100, m["flops"] / 1e6, m["params"] / 1e3,
                    m["batch1_median_ms"], m["batch32_median_ms"]]
        tolerances = [0.005, 0.005, 0.05, 0.0005, 0.005]
        for printed, value, tol in zip(rows[name], expected, tolerances):
            assert abs(printed - value) <= tol + 1e-9, (name, printed, value)


def _showcase_line(name):
    """The README's ResNet-20 showcase row of ``name`` as printed."""
    body = re.search(r"<!-- results:prune_resnet20_2x -->\n(.*?)<!-- /results -->",
                     README_TEXT, re.S).group(1)
    return next(line for line in body.splitlines() if line.startswith(f"| {name} |"))


def _with_b1_cell(line, value):
    """``line`` with its batch-1 latency cell (the fifth value) replaced by ``value``."""
    cells = line.strip("|").split("|")
    cells[4] = f" {value} "
    return "|" + "|".join(cells) + "|"


def test_check_fails_when_a_result_value_changes(tmp_path, capsys):
    results = _copy_results(tmp_path)
    assert render_readme.main(["--check", "--results", str(results)]) == 0
    _edit(results, "prune_resnet20_2x",
          lambda d: d["after"].update(batch1_median_ms=0.0453))
    assert render_readme.main(["--check", "--results", str(results)]) == 1
    out = capsys.readouterr().out
    printed = _showcase_line("pruned + fine-tuned")
    assert "-" + printed in out
    assert "+" + _with_b1_cell(printed, "0.045") in out


def test_check_fails_when_a_figure_quoted_in_prose_changes(tmp_path):
    results = _copy_results(tmp_path)
    _edit(results, "fuzz", lambda d: d.update(mismatches=2))
    _edit(results, "prune_vs_torch_pruning", lambda d: d["budget"].update(gate_steps=150))
    problems = render_readme.prose_differences(README_TEXT, str(results))
    assert any("mismatches" in p and "'2'" in p for p in problems), problems
    assert any("spend {} of those steps" in p and "'150'" in p for p in problems), problems
    assert any("same {} steps" in p and "'450'" in p for p in problems), problems


def test_a_hand_edited_region_is_caught_and_rendering_restores_it():
    printed = _showcase_line("teacher")
    edited = README_TEXT.replace(printed, _with_b1_cell(printed, "0.001"))
    assert edited != README_TEXT
    problems = render_readme.region_differences(edited)
    assert len(problems) == 1 and "results:prune_resnet20_2x" in problems[0]
    assert render_readme.render(edited) == README_TEXT


def test_a_region_without_a_renderer_is_an_error():
    with pytest.raises(KeyError, match="no_such_table"):
        render_readme.render("<!-- results:no_such_table -->\nx\n<!-- /results -->\n")
