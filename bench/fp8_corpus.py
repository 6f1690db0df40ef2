"""Real text as one flat token array, for the fp8-vs-bf16 loss-parity run (bench/fp8_train.py).

The bundled corpus (Shakespeare, Tang/Song poems) plus any text files under `--extra` (e.g. the
Python documentation's reST sources from Debian's python3.11-doc), tokenized with a sentencepiece
model, each document followed by EOS, written as uint16 (.npy) so it travels to the GPU machine:

    apt-get download python3.11-doc && dpkg -x python3.11-doc_*.deb /tmp/pydoc
    python bench/fp8_corpus.py --extra /tmp/pydoc/usr/share/doc/python3.11/html/_sources \
        --tokenizer .venv/lib/python3.11/site-packages/mistral_common/data/tokenizer.model.v1 \
        --out .fp8data/tokens.npy
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import sentencepiece as spm

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "internlm" / "assets" / "corpus"


def documents(extra: list[Path]):
    for path in sorted(BUNDLED.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]
    for folder in extra:
        for path in sorted(folder.rglob("*.txt")):
            yield path.read_text(encoding="utf-8", errors="replace")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="a sentencepiece .model file (vocabulary < 65,536)")
    p.add_argument("--extra", type=Path, action="append", default=[], help="folders of .txt files to add")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    sp = spm.SentencePieceProcessor(model_file=str(args.tokenizer))
    if sp.get_piece_size() >= 2**16:
        sys.exit(f"the tokenizer's vocabulary ({sp.get_piece_size()}) does not fit uint16")
    pieces, docs = [], 0
    for text in documents(args.extra):
        pieces.append(np.asarray(sp.encode(text) + [sp.eos_id()], dtype=np.uint16))
        docs += 1
    tokens = np.concatenate(pieces)
    os.makedirs(args.out.parent, exist_ok=True)
    np.save(args.out, tokens)
    print(f"{docs} documents, {tokens.size:,} tokens, vocabulary {sp.get_piece_size()}, eos {sp.eos_id()} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
