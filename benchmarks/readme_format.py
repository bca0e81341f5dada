"""How the README's rendered regions write numbers and prose: percentages, paragraphs
wrapped at the README's width, tables, the best accuracy in bold. Shared by the region
renderers (``benchmarks/readme_tables.py``, ``readme_nas.py``) and the prose check."""
import textwrap
from typing import List, Sequence


def pct(fraction: float) -> str:
    """An accuracy stored as a fraction, written in percent with two decimals."""
    return f"{fraction * 100:.2f}"


def paragraph(text: str) -> str:
    """Prose re-wrapped at the README's width (the renderers write it on one line)."""
    return textwrap.fill(" ".join(text.split()), 92, break_long_words=False,
                         break_on_hyphens=False)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def bold_best(values: Sequence[float]) -> List[str]:
    """Accuracies in percent, the highest in bold (all rows compete, ours and the peer's)."""
    best = max(values)
    return [f"**{pct(v)}**" if v == best else pct(v) for v in values]
