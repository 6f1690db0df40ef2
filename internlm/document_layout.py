"""Where the documents of a packed batch start and end.

A packed row concatenates several documents. Position ids restart at 0 at every document start,
so they alone define the layout: document ids are a cumulative count of the zeros. Attention
backends turn this into whatever they need (a dense mask, a block mask, cu_seqlens) once per
forward pass, and every layer shares it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class DocumentLayout:
    position_ids: torch.Tensor  # [B, S], restart at 0 per document
    document_ids: torch.Tensor  # [B, S], 0, 1, 2, ... per row
    cu_seqlens: torch.Tensor | None = None  # [docs + 1] int32 over the flattened B*S tokens
    max_seqlen: int | None = None
    cache: dict[str, Any] = field(default_factory=dict)  # per-backend prepared masks
    # Every row holds one document (or one piece of one): plain causal attention per row. Known on
    # the host only from the loader's cu_seqlens (its length is a shape: no device sync), so a
    # batch without them, or whose boundaries moved, keeps False. A plain bool set eagerly, not a
    # property: compiled blocks then guard on it, not on cu_seqlens' length, which changes per batch.
    one_document_per_row: bool = False

    @classmethod
    def from_positions(
        cls, position_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None
    ) -> "DocumentLayout":
        document_ids = torch.cumsum((position_ids == 0).to(torch.int32), dim=1)
        # cu_seqlens opens a segment at every row start, so as many segments as rows means no row
        # holds a second document
        one_per_row = cu_seqlens is not None and cu_seqlens.numel() - 1 == position_ids.shape[0]
        return cls(position_ids, document_ids, cu_seqlens, max_seqlen, one_document_per_row=one_per_row)

    def dense_mask(self) -> torch.Tensor:
        """[B, 1, S, S] bool: True where query i may attend key j (same document, j <= i)."""
        if "dense" not in self.cache:
            ids = self.document_ids
            seq = ids.shape[1]
            causal = torch.ones(seq, seq, dtype=torch.bool, device=ids.device).tril()
            same_doc = ids[:, :, None] == ids[:, None, :]
            self.cache["dense"] = (same_doc & causal)[:, None]
        return self.cache["dense"]
