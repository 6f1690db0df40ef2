"""Checkpoint interop: Hugging Face (Llama layout) and the original InternLM format, both ways.

* `export_hf` writes a ``LlamaForCausalLM`` folder (config, safetensors, generation config, tokenizer
  with InternLM's chat template) that stock transformers, vLLM and LMDeploy load.
* `load_hf_checkpoint` reads a Llama-layout HF folder as our config + state dict.
* `load_internlm_checkpoint` / `save_internlm_checkpoint` read and write ``model_tp*_pp*.pt``.
* `load_into` copies a state dict into our model after checking keys and shapes;
  `check_same_architecture` compares a configured model with a checkpoint's config.
"""

from internlm.interop.hf_config import check_same_architecture, hf_config_dict, transformer_config_from_hf
from internlm.interop.hf_export import export_hf
from internlm.interop.hf_import import hf_state_to_ours, load_hf_checkpoint
from internlm.interop.internlm_format import load_internlm_checkpoint, save_internlm_checkpoint
from internlm.interop.load_state import LoadReport, load_into

__all__ = [
    "LoadReport",
    "check_same_architecture",
    "export_hf",
    "hf_config_dict",
    "hf_state_to_ours",
    "load_hf_checkpoint",
    "load_internlm_checkpoint",
    "load_into",
    "save_internlm_checkpoint",
    "transformer_config_from_hf",
]
