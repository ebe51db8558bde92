"""One-shot demonstrations: which training pairs are shown before each test pair, chosen by seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nlilab import LABELS
from nlilab.errors import NlilabError


# =========================================================================================== demonstrations
@dataclass
class DemoPlan:
    """Which train rows serve as demonstrations. `per_label` holds one row per label when labels rotate."""

    seed: int
    rotate: bool
    rows: list[dict]  # the demonstration rows (1 when fixed, 3 when rotating)

    def for_example(self, index: int) -> list[dict]:
        if not self.rows:
            return []
        # Rotation: example i sees a demonstration of label (i + seed) mod 3, so each label is shown to a third.
        return [self.rows[(index + self.seed) % len(self.rows)]] if self.rotate else [self.rows[0]]

    def group(self, index: int) -> int:
        """Examples with the same demonstration share a prompt prefix (computed once)."""
        return (index + self.seed) % len(self.rows) if self.rotate and self.rows else 0

    def groups(self) -> list[list[dict]]:
        """The demonstrations of each group, in group order (one empty group for zero-shot)."""
        return [[row] for row in self.rows] if self.rotate and self.rows else [self.for_example(0)]

    def record(self) -> list[dict]:
        return [{"pairID": r["pairID"], "label": LABELS[r["label"]], "premise": r["premise"],
                 "hypothesis": r["hypothesis"]} for r in self.rows]


def choose_demos(train, seed: int, shots: int, rotate: bool, exclude_ids=()) -> DemoPlan:
    """Demonstrations drawn from the train split by `seed` (never from an evaluated split: rows whose pairID
    appears in `exclude_ids` are skipped as a guard against overlapping files)."""
    if shots == 0:
        return DemoPlan(seed, rotate, [])
    if shots != 1:
        raise NlilabError(f"only zero-shot and one-shot prompting are supported, got {shots} shots")
    labels = np.asarray(train["label"], dtype=int)
    excluded = set(exclude_ids)
    allowed = np.array([pid not in excluded for pid in train["pairID"]], dtype=bool)
    rng = np.random.default_rng(seed)
    wanted = range(len(LABELS)) if rotate else [None]
    rows = []
    for label in wanted:
        pool = np.flatnonzero(allowed & ((labels == label) if label is not None else True))
        if len(pool) == 0:
            raise NlilabError(f"no train row{'' if label is None else ' with label ' + LABELS[label]} is "
                              "available as a demonstration")
        rows.append(dict(train[int(rng.choice(pool))]))
    return DemoPlan(seed, rotate, rows)
