"""Shortcuts in the metadata: manifest columns (view position, device, site, sex, ...) whose values track the label.

A model can score well by recognising a portable AP film or one hospital's scanner instead of the finding; the
label balance per value of each categorical column, with a chi-square test of independence (scipy's
`chi2_contingency`) and Cramér's V for the size of the association, says where. Flagged: p below `alpha` AND
V of at least `min_v` (with a few hundred images, a tiny association is significant yet harmless).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

MAX_VALUES = 20  # more distinct values than this: not a category (age in years, a free-text column)


@dataclass(frozen=True)
class Shortcut:
    column: str
    counts: dict  # value -> {label: count}
    chi2: float
    p: float
    cramers_v: float
    flagged: bool
    line: str  # one readable sentence

    def to_json(self) -> dict:
        return {"column": self.column, "counts": self.counts, "chi2": round(self.chi2, 3), "p": self.p,
                "cramers_v": round(self.cramers_v, 3), "flagged": self.flagged, "line": self.line}


def _p_text(p: float) -> str:
    for bound in (1e-6, 1e-4, 1e-3):
        if p < bound:
            return f"p < {bound:.0e}".replace("e-0", "e-")
    return f"p = {p:.2g}"


def shortcut_table(samples, alpha: float = 1e-3, min_v: float = 0.1) -> list[Shortcut]:
    """One Shortcut per categorical extra column of the samples (Sample.extra), in column order."""
    from scipy.stats import chi2_contingency

    columns = list(dict.fromkeys(c for s in samples for c, _ in s.extra))
    labels = sorted({s.label for s in samples})
    out = []
    for col in columns:
        pairs = [(dict(s.extra).get(col, ""), s.label) for s in samples]
        pairs = [(v, lab) for v, lab in pairs if v != ""]
        values = sorted({v for v, _ in pairs})
        if not 2 <= len(values) <= MAX_VALUES or len(labels) < 2:
            continue
        count = Counter(pairs)
        table = np.array([[count[(v, lab)] for lab in labels] for v in values], dtype=float)
        table = table[table.sum(1) > 0][:, table.sum(0) > 0]
        if min(table.shape) < 2:
            continue
        chi2, p, _, _ = chi2_contingency(table)
        v = float(np.sqrt(chi2 / (table.sum() * (min(table.shape) - 1))))
        share = table / table.sum(1, keepdims=True)
        c = int(np.argmax(share.max(0) - share.min(0)))  # the label whose share moves most between values
        hi, lo = int(np.argmax(share[:, c])), int(np.argmin(share[:, c]))
        flagged = bool(p < alpha and v >= min_v)
        line = (f"{col}: {values[hi]} {share[hi, c]:.0%} {labels[c]} vs {values[lo]} {share[lo, c]:.0%}, "
                f"{_p_text(p)}" + (f": a model can learn the {col.replace('_', ' ')} instead of the finding"
                                   if flagged else ""))
        out.append(Shortcut(col, {val: {lab: count[(val, lab)] for lab in labels} for val in values},
                            float(chi2), float(p), v, flagged, line))
    return out


def to_markdown(shortcuts: list[Shortcut]) -> str:
    if not shortcuts:
        return "## Shortcuts in the metadata\n\nNo categorical manifest column beyond image/label/patient/split/fold.\n"
    flagged = [s for s in shortcuts if s.flagged]
    out = ["## Shortcuts in the metadata", "",
           f"**{len(flagged)} column(s) track the label**" if flagged else "No column tracks the label strongly.", ""]
    out += [f"- **SHORTCUT** {s.line}" for s in flagged]
    out += [f"- {s.line} (Cramér's V {s.cramers_v:.2f})" for s in shortcuts if not s.flagged]
    return "\n".join(out) + "\n"
