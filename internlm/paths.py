"""Where the package finds its configs and bundled assets, whatever the working directory."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
CORPUS_DIR = ASSETS_DIR / "corpus"
BUNDLED_TOKENIZER = ASSETS_DIR / "tokenizer" / "bundled.model"


def conf_dir() -> Path:
    """`conf/` beside the package in a source checkout or editable install, else the copy packaged
    inside it (`internlm/conf`, put there by the wheel build)."""
    for candidate in (PACKAGE_DIR.parent / "conf", PACKAGE_DIR / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"cannot find internlm's conf/ next to {PACKAGE_DIR}")


def compile_cache_dirs() -> dict[str, str]:
    """torch.compile's persistent caches: the user's cache folder (not /tmp), unless
    TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR say otherwise."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "internlm"
    return {
        "TORCHINDUCTOR_CACHE_DIR": os.environ.get("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor")),
        "TRITON_CACHE_DIR": os.environ.get("TRITON_CACHE_DIR", str(root / "triton")),
    }
