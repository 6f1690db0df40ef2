"""Evaluation: datasets in their original formats, OpenCompass-style prompts, evaluators by kind
(likelihood multiple choice, bits per byte, generative exact match, code execution) and the
summary table. Everything here talks to a model only through `protocol.LanguageModel`."""
