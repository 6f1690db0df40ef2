"""Tokenizers (group ``tokenizer``), their training, and InternLM's chat format."""

from internlm.components.tokenizer.chat_template import encode_chat, render_chat, stop_ids
from internlm.components.tokenizer.sentencepiece import SentencePieceConfig, SentencePieceTokenizer
from internlm.components.tokenizer.train import train_sentencepiece

__all__ = [
    "SentencePieceConfig",
    "SentencePieceTokenizer",
    "encode_chat",
    "render_chat",
    "stop_ids",
    "train_sentencepiece",
]
