"""What every method's builder returns, encoder methods and the QLoRA classifier alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class Built:
    model: object
    save: Callable[[str], None]  # writes what reusing the result needs into a folder (never the frozen base)
    notes: dict  # method facts worth recording in metrics.json (e.g. which modules train)
