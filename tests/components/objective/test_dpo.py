"""DPO: every loss type against hand-computed values; pair log-probs against plain PyTorch;
preference rows packed with document masking."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
sys.path.insert(0, str(Path(__file__).parents[2] / "interop"))
from datahelpers import train_tokenizer  # noqa: E402
from interop_helpers import random_model, tiny_config  # noqa: E402

from internlm import registry  # noqa: E402
from internlm.batch import IGNORE_INDEX  # noqa: E402
from internlm.components.data.preference import PreferenceDataConfig  # noqa: E402
from internlm.components.objective.dpo import DPO, DPOConfig, PairLogps, dpo_losses  # noqa: E402
from internlm.errors import ConfigError  # noqa: E402


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# One pair: policy log-probs -10 (chosen, 4 tokens) and -12 (rejected, 5 tokens); reference -11, -11.5.
POLICY = PairLogps(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([4.0]), torch.tensor([5.0]))
REF = (torch.tensor([-11.0]), torch.tensor([-11.5]))
# d = (-10 + 11) - (-12 + 11.5) = 1.5; beta d = 0.15
HAND = {
    ("sigmoid", 0.0): -log_sigmoid(0.15),
    ("sigmoid", 0.1): -0.9 * log_sigmoid(0.15) - 0.1 * log_sigmoid(-0.15),
    ("robust", 0.1): (-0.9 * log_sigmoid(0.15) + 0.1 * log_sigmoid(-0.15)) / 0.8,
    ("hinge", 0.0): 0.85,
    # (1 / 4 - (-0.5) / 5 - 1 / (2 * 0.1))^2 = (0.35 - 5)^2
    ("ipo", 0.0): 21.6225,
}


@pytest.mark.parametrize("loss,smoothing", list(HAND))
def test_each_loss_equals_the_hand_computed_value(loss, smoothing):
    got = dpo_losses(POLICY, *REF, DPOConfig(loss=loss, beta=0.1, label_smoothing=smoothing))
    assert got.item() == pytest.approx(HAND[(loss, smoothing)], rel=1e-6)


def test_bad_objective_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown DPO loss 'kto'"):
        DPO(DPOConfig(loss="kto"))
    with pytest.raises(ConfigError, match="label_smoothing") as err:
        DPO(DPOConfig(loss="robust", label_smoothing=0.5))
    assert err.value.where == "objective.label_smoothing"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "small.model", 400)


PAIRS = [
    {"prompt": "the king", "chosen": "love the queen", "rejected": "blood"},
    {"chosen": [{"role": "user", "content": "night"}, {"role": "assistant", "content": "day moon"}],
     "rejected": [{"role": "user", "content": "night"}, {"role": "assistant", "content": "river"}]},
    {"prompt": [{"role": "user", "content": "sword"}], "chosen": [{"role": "assistant", "content": "crown"}],
     "rejected": [{"role": "assistant", "content": "the heart of the king"}]},
]


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def build(tokenizer, path, seq_len=96, **fields):
    return registry.build(PreferenceDataConfig(paths=[str(path)], seq_len=seq_len, global_batch_size=2, **fields), tokenizer)


def test_pairs_are_packed_whole_with_documents_restarting(tmp_path, tokenizer):
    data = build(tokenizer, write(tmp_path / "p.jsonl", PAIRS))
    batch = data.train_rows.get([0, 1] if len(data.train_rows) > 1 else [0]).to_batch()
    pairs = int(batch.sequence_pair.max()) + 1
    assert pairs == 3 and batch.pair_keys.tolist() == list(range(3))
    for p in range(pairs):
        for side in (True, False):
            where = (batch.sequence_pair == p) & (batch.sequence_chosen == side)
            assert where.any()
            positions = batch.position_ids[where]
            assert positions[0] == 0 and torch.equal(positions, torch.arange(len(positions)))  # one document
            labelled = batch.labels[where] != IGNORE_INDEX
            assert labelled.any() and not labelled[-1]  # the last token predicts nothing across documents
    # the conversational pair scores only the final answer: "day moon<eoa>" / "river<eoa>"
    where = (batch.sequence_pair == 1) & batch.sequence_chosen
    assert tokenizer.decode(batch.labels[where][batch.labels[where] != IGNORE_INDEX].tolist()) == "day moon<eoa>"
    assert (batch.labels[batch.sequence_pair < 0] == IGNORE_INDEX).all()  # padding has no loss


def test_pair_logps_and_step_match_plain_pytorch(tmp_path, tokenizer):
    data = build(tokenizer, write(tmp_path / "p.jsonl", PAIRS))
    batch = data.train_rows.get(list(range(len(data.train_rows)))).to_batch()
    model = random_model(tiny_config(num_kv_heads=None, vocab_size=512))
    ref = random_model(tiny_config(num_kv_heads=None, vocab_size=512), seed=1)

    def plain(m):  # sum of log p(label) per (pair, side), each sequence run on its own (no packing)
        out = {}
        for p in range(3):
            for side in (True, False):
                where = (batch.sequence_pair == p) & (batch.sequence_chosen == side)
                ids, labels = batch.input_ids[where][None], batch.labels[where]
                logp = torch.log_softmax(m(ids)[0].float(), -1)
                keep = labels != IGNORE_INDEX
                out[p, side] = logp[keep].gather(1, labels[keep][:, None]).sum()
        return out

    mine, theirs = plain(model), plain(ref)
    objective = DPO(DPOConfig(beta=0.2, sft_weight=0.5))
    objective.reference = lambda b: (torch.stack([theirs[p, True] for p in range(3)]), torch.stack([theirs[p, False] for p in range(3)]))
    assert objective.units(batch) == 3
    result = objective.step(model, batch)
    chosen = torch.stack([mine[p, True] for p in range(3)])
    rejected = torch.stack([mine[p, False] for p in range(3)])
    ref_c, ref_r = objective.reference(batch)
    n_c = torch.tensor([float(((batch.sequence_pair == p) & batch.sequence_chosen & (batch.labels != IGNORE_INDEX)).sum()) for p in range(3)])
    margin = 0.2 * ((chosen - ref_c) - (rejected - ref_r))
    expected = (-torch.nn.functional.logsigmoid(margin) + 0.5 * (-chosen / n_c)).sum()
    torch.testing.assert_close(result.loss_sum, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.metrics["logps/chosen"], chosen.sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.metrics["rewards/margins"], margin.sum(), rtol=1e-5, atol=1e-5)
    assert result.metrics["rewards/accuracies"].item() == float((margin > 0).sum())


def test_pair_count_reads_no_tensor_values(tmp_path, tokenizer):
    """The count comes from pair_keys' shape: on a GPU batch, reading sequence_pair would stall the
    host mid-step. A meta-device batch has shapes but no values, so any read would fail here."""
    data = build(tokenizer, write(tmp_path / "p.jsonl", PAIRS))
    batch = data.train_rows.get(list(range(len(data.train_rows)))).to_batch()
    assert DPO().units(batch) == int(batch.sequence_pair.max()) + 1 == 3
    assert DPO().units(batch.to("meta")) == 3


@pytest.mark.parametrize(
    "record,reason",
    [
        ({"prompt": "the king", "rejected": "blood"}, "missing_answer"),
        ({"chosen": "love", "rejected": "blood"}, "missing_prompt"),
        ({"prompt": "the king", "chosen": " ", "rejected": "blood"}, "empty_answer"),
        ({"prompt": "the king " * 30, "chosen": "love", "rejected": "blood"}, "pair_too_long"),
    ],
)
def test_bad_pairs_are_one_clear_error_with_file_and_line(tmp_path, tokenizer, record, reason):
    path = write(tmp_path / "bad.jsonl", [PAIRS[0], record])
    with pytest.raises(ConfigError, match=rf"bad\.jsonl:2: {reason}") as err:
        build(tokenizer, path, seq_len=64)
    assert err.value.where == "data.paths"
