"""README tables and quoted figures rendered from ``benchmarks/results/*.json``.

Why: a figure a reader cannot reproduce from the result files is worth nothing, and a
README edited by hand drifts from the files it cites (issue 21 found showcase latencies,
ViT block-pruning times and NAS figures that no result file held). So every README figure
that comes from a result file lives between markers that this script owns::

    <!-- results:prune_resnet20_2x -->
    ...rendered text...
    <!-- /results -->

``REGIONS`` (``benchmarks/readme_tables.py``) maps each region name to the result files it
reads and the renderer that turns them into markdown (one function per kind of table or
paragraph). The few figures left in hand-written prose are listed in ``PROSE_FIGURES``
(``benchmarks/readme_prose.py``: the README phrase, the file, the value) and checked, not
rendered. This file holds the markers, the loading of the files and the command.

    python benchmarks/render_readme.py            # rewrite README.md in place
    python benchmarks/render_readme.py --check    # exit 1 and print the differences if stale

Pure standard library, so ``tests/test_readme_figures.py`` runs it in a second.
"""
import argparse
import difflib
import json
import os
import re
import sys
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)   # run as a script: the sibling modules import as benchmarks.*

from benchmarks.readme_prose import PROSE_FIGURES, prose_problems  # noqa: E402
from benchmarks.readme_tables import REGIONS  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
README = os.path.join(ROOT, "README.md")
REGION = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results -->)",
                    re.S)


def load_results(names, results_dir: str = RESULTS) -> Dict[str, dict]:
    out = {}
    for name in names:
        with open(os.path.join(results_dir, f"{name}.json")) as f:
            out[name] = json.load(f)
    return out


def _all_files() -> List[str]:
    names = {n for files, _ in REGIONS.values() for n in files}
    return sorted(names | {n for _, files, _ in PROSE_FIGURES for n in files})


def render(text: str, results_dir: str = RESULTS) -> str:
    """``text`` with the body of every marked region replaced by its renderer's output."""
    results = load_results(_all_files(), results_dir)

    def fill(match):
        name = match.group("name")
        if name not in REGIONS:
            raise KeyError(f"README region {name!r} has no renderer; known: {sorted(REGIONS)}")
        return match.group(1) + REGIONS[name][1](results).rstrip("\n") + "\n" + match.group(4)
    return REGION.sub(fill, text)


def region_differences(text: str, results_dir: str = RESULTS) -> List[str]:
    """A unified diff per region whose text differs from what its files render, and a line
    per renderer whose region is missing from the README."""
    rendered = {m.group("name"): m.group("body") for m in REGION.finditer(render(text,
                                                                                 results_dir))}
    current = {m.group("name"): m.group("body") for m in REGION.finditer(text)}
    problems = [f"region {name!r} is missing from the README" for name in REGIONS
                if name not in current]
    for name, body in current.items():
        if body != rendered[name]:
            diff = difflib.unified_diff(body.splitlines(), rendered[name].splitlines(),
                                        f"README.md <!-- results:{name} -->",
                                        f"rendered from {', '.join(REGIONS[name][0])}",
                                        lineterm="")
            problems.append("\n".join(diff))
    return problems


def prose_differences(text: str, results_dir: str = RESULTS) -> List[str]:
    """A line per ``PROSE_FIGURES`` phrase (outside the regions) that is missing, appears
    more than once, or quotes figures other than its result files hold."""
    prose = REGION.sub(lambda m: m.group(1) + m.group(4), text)
    return prose_problems(prose, load_results(_all_files(), results_dir))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="print the differences and exit 1 if README.md is stale")
    parser.add_argument("--readme", default=README)
    parser.add_argument("--results", default=RESULTS)
    args = parser.parse_args(argv)
    with open(args.readme) as f:
        text = f.read()
    if args.check:
        problems = region_differences(text, args.results) + prose_differences(text,
                                                                              args.results)
        print("\n\n".join(problems) if problems else "README.md matches benchmarks/results/")
        return 1 if problems else 0
    new = render(text, args.results)
    if new != text:
        with open(args.readme, "w") as f:
            f.write(new)
    print(f"{args.readme}: {len(REGION.findall(new))} regions rendered"
          + ("" if new != text else " (unchanged)"))
    for problem in prose_differences(new, args.results):
        print("prose:", problem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
