"""Next-token objective: its loss sum and unit count against plain PyTorch cross-entropy."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parents[2] / "interop"))
from interop_helpers import random_model, tiny_config  # noqa: E402

from internlm.batch import IGNORE_INDEX, Batch  # noqa: E402
from internlm.components.objective.next_token import NextToken  # noqa: E402


def test_loss_sum_and_count_equal_plain_cross_entropy_over_labelled_tokens():
    model = random_model(tiny_config(vocab_size=97))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 97, (2, 12), generator=g)
    labels = torch.randint(0, 97, (2, 12), generator=g)
    labels[0, :5] = IGNORE_INDEX  # a prompt that takes no loss
    labels[1, -2:] = IGNORE_INDEX
    positions = torch.tensor([list(range(12)), list(range(7)) + list(range(5))])  # two documents in row 1
    batch = Batch(input_ids=ids, labels=labels, position_ids=positions)
    objective = NextToken()

    with torch.no_grad():
        result = objective.step(model, batch)
        logits = model(ids, position_ids=positions)
    expected = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")

    assert objective.units(batch) == 17 == int(result.count)  # 24 tokens, 5 + 2 unlabelled
    torch.testing.assert_close(result.loss_sum, expected, rtol=1e-5, atol=1e-5)
    # a device scalar, not a host int: reading it between forward and backward would sync the GPU
    assert isinstance(result.count, torch.Tensor) and result.count.device == labels.device
