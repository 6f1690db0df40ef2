"""The block mask built from document tiles equals create_block_mask's (which calls the mask
function on every query/key pair), and FlexAttention with it gives eager's answer."""

from __future__ import annotations

import pytest
import torch

from internlm.components.model import attention_backends as ab
from internlm.components.model import document_block_mask as dbm
from internlm.document_layout import DocumentLayout

flex = pytest.importorskip("torch.nn.attention.flex_attention")


def packed_positions(batch: int, seq: int, generator: torch.Generator, longest: int) -> torch.Tensor:
    """Rows of documents of random lengths 1..longest; rows may start mid-document."""
    rows = []
    for _ in range(batch):
        row = list(range(int(torch.randint(0, 50, (1,), generator=generator)), 60))
        while len(row) < seq:
            row += list(range(int(torch.randint(1, longest + 1, (1,), generator=generator))))
        rows.append(row[:seq])
    return torch.tensor(rows)


def reference_mask(ids: torch.Tensor):
    batch, seq = ids.shape
    return flex.create_block_mask(ab._document_mask_mod(ids), batch, None, seq, seq, device="cpu")


@pytest.mark.parametrize("longest", [3, 100, 300, 2000])  # tiles of many documents .. rows of one
def test_tiles_match_create_block_mask(longest):
    g = torch.Generator().manual_seed(longest)
    for _ in range(3):
        ids = DocumentLayout.from_positions(packed_positions(3, 1024, g, longest)).document_ids
        ours = dbm.document_block_mask(ids, flex.BlockMask, ab._document_mask_mod(ids))
        theirs = reference_mask(ids)
        for name in ("kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks"):
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), msg=name)
        torch.testing.assert_close(ours.to_dense(), theirs.to_dense())  # partial and full, tile by tile
        for name in ("kv", "full_kv"):  # the visible key tiles of each query tile, in the same order
            count, ours_idx, theirs_idx = getattr(theirs, f"{name}_num_blocks"), getattr(ours, f"{name}_indices"), getattr(theirs, f"{name}_indices")
            keep = torch.arange(ours_idx.shape[-1]) < count[..., None]
            assert torch.equal(ours_idx[keep], theirs_idx[keep]), name


def test_hand_counted_tiles():
    """Two rows of 4 tiles: row 0 one document; row 1 documents of 200, 56 and 256 tokens."""
    ids = torch.cat([torch.zeros(1, 512, dtype=torch.int32),
                     torch.tensor([[1] * 200 + [2] * 56 + [3] * 256], dtype=torch.int32)])
    partial, full = dbm.tile_classes(ids)
    # row 0: diagonal partial, everything below it full
    assert partial[0, 0].int().tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert full[0, 0].int().tolist() == [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]
    # row 1: tiles 0 [1], 1 [1, 2], 2 [3], 3 [3]: tile 1 sees tile 0 (document 1) partially, tiles
    # 2 and 3 see nothing before document 3, which starts at tile 2; tile 3 sees tile 2 fully
    assert partial[1, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert full[1, 0].int().tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]


@pytest.mark.filterwarnings("ignore:.*flex_attention.*")
def test_flex_with_the_tile_mask_equals_eager():
    g = torch.Generator().manual_seed(9)
    positions = packed_positions(2, 256, g, 90)
    layout = DocumentLayout.from_positions(positions)
    q, k, v = (torch.randn(2, 256, 2, 8, generator=g) for _ in range(3))
    got = ab.flex_attention(q, k, v, layout, 0.4)
    assert "flex_block_mask" in layout.cache and dbm.builds(256)
    torch.testing.assert_close(got, ab.eager_attention(q, k, v, DocumentLayout.from_positions(positions), 0.4), rtol=1e-5, atol=1e-5)


def test_rows_not_in_whole_tiles_are_left_to_create_block_mask():
    assert not dbm.builds(200) and not dbm.builds(64) and dbm.builds(4096)
