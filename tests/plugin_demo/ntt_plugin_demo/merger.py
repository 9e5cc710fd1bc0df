"""A merger that keeps the semantic scores as they are (no overlap penalty)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class KeepScoresMerger:
    name: ClassVar[str] = "demo-merger"

    @classmethod
    def from_config(cls, config: Any) -> KeepScoresMerger:
        return cls()

    def merge_scores(self, inter, areas, mask_features, labels, semantic_scores):
        import torch

        return semantic_scores.to(torch.float32).clone()
