"""DPO against TRL's own implementation: the same two pairs, the same weights (our model exported
to a LlamaForCausalLM), TRL's DPOTrainer.compute_loss on its padded batch against our objective on
the packed one, for every loss type; metrics under the same names."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "interop"))
from interop_helpers import random_model, tiny_config  # noqa: E402

from internlm.batch import IGNORE_INDEX, Batch, cu_seqlens_from_positions  # noqa: E402
from internlm.components.objective.dpo import DPO, DPOConfig, pair_logps  # noqa: E402
from internlm.interop import export_hf  # noqa: E402

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

TOKENIZER = Path(__file__).parents[3] / "internlm" / "assets" / "tokenizer" / "bundled.model"
PROMPT = 3  # the first 3 tokens of every sequence are the prompt
# pair 0: chosen, rejected; pair 1: chosen, rejected (different answer lengths)
SEQUENCES = [[1, 5, 9, 33, 7, 2], [1, 5, 9, 12, 13, 2], [1, 8, 4, 40, 2], [1, 8, 4, 21]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trl")
    policy, reference = random_model(tiny_config(num_kv_heads=None)), random_model(tiny_config(num_kv_heads=None), seed=1)
    export_hf(policy.state_dict(), policy.config, tmp / "policy", dtype=torch.float32, tokenizer_model=TOKENIZER)
    export_hf(reference.state_dict(), reference.config, tmp / "reference", dtype=torch.float32)
    load = lambda name: transformers.LlamaForCausalLM.from_pretrained(tmp / name, dtype=torch.float32)
    return policy, reference, load("policy"), load("reference"), transformers.AutoTokenizer.from_pretrained(tmp / "policy"), tmp


def trl_inputs():
    """TRL's collated batch: all chosen rows, then all rejected rows, right-padded."""
    order = [SEQUENCES[0], SEQUENCES[2], SEQUENCES[1], SEQUENCES[3]]
    width = max(map(len, order))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in order])
    attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in order])
    completion = attention.clone()
    completion[:, :PROMPT] = 0
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}


def packed_batch() -> Batch:
    """Our batch: the four sequences as documents of one row."""
    ids, labels, positions, pair, chosen = [], [], [], [], []
    for index, seq in enumerate(SEQUENCES):
        ids += seq
        labels += [tok if t + 1 >= PROMPT else IGNORE_INDEX for t, tok in enumerate(seq[1:])] + [IGNORE_INDEX]
        positions += list(range(len(seq)))
        pair += [index // 2] * len(seq)
        chosen += [index % 2 == 0] * len(seq)
    position_ids = torch.tensor([positions])
    cu, longest = cu_seqlens_from_positions(position_ids)
    return Batch(torch.tensor([ids]), torch.tensor([labels]), position_ids, cu, longest,
                 sequence_pair=torch.tensor([pair]), sequence_chosen=torch.tensor([chosen]), pair_keys=torch.arange(2))


@pytest.mark.parametrize("loss,smoothing", [("sigmoid", 0.0), ("hinge", 0.0), ("ipo", 0.0), ("robust", 0.2)])
def test_loss_and_metrics_equal_trls(models, loss, smoothing):
    policy, reference, hf_policy, hf_reference, tokenizer, tmp = models
    args = trl.DPOConfig(output_dir=str(tmp / loss), use_cpu=True, bf16=False, report_to=[], beta=0.2, loss_type=[loss],
                         label_smoothing=smoothing, per_device_train_batch_size=2)
    data = datasets.Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])  # not used: we pass the batch
    trainer = trl.DPOTrainer(model=hf_policy, ref_model=hf_reference, args=args, train_dataset=data, processing_class=tokenizer)
    hf_policy.train()
    theirs = trainer.compute_loss(trainer.model, trl_inputs())
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    batch = packed_batch()
    with torch.no_grad():
        ref = pair_logps(-reference(batch.input_ids, labels=batch.labels, reduction="none", **batch.model_inputs()), batch)
    objective = DPO(DPOConfig(loss=loss, beta=0.2, label_smoothing=smoothing), reference=lambda b: (ref.chosen, ref.rejected))
    ours = objective.step(policy.train(), batch)
    assert ours.count == 2
    assert (ours.loss_sum / 2).item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert (ours.metrics[name] / 2).item() == pytest.approx(logged[name], rel=1e-5, abs=1e-6), name
