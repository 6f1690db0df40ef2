"""The Triton source of a profile's slowest generated kernels, from inductor's cache: what each
one reads and writes, its tiling (size hints, the launch heuristic) and its tuned config.

    python bench/kernel_sources.py --profile $OUT/sc/profile_fp8master.txt --out $OUT/kernels --top 12

Kernel names come from profile_program.py's "top kernels" table (`triton_*` rows); a name can be
defined in several cached files (one per compiled graph): all are copied, with the `.best_config`
beside each when inductor stored one.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def top_triton_kernels(profile_text: str, top: int) -> list[str]:
    section = profile_text.split("## top kernels", 1)[-1].split("\n## ", 1)[0]
    names = re.findall(r"\s(triton_\w+)\s*$", section, flags=re.M)
    return names[:top]


def cache_roots() -> list[str]:
    sys.path.insert(0, ROOT)
    from internlm.paths import compile_cache_dirs

    return [compile_cache_dirs()["TORCHINDUCTOR_CACHE_DIR"], f"/tmp/torchinductor_{os.environ.get('USER', 'root')}"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--per-name", type=int, default=3, help="at most this many files per kernel name")
    args = p.parse_args()
    names = top_triton_kernels(open(args.profile).read(), args.top)
    os.makedirs(args.out, exist_ok=True)
    found = {name: 0 for name in names}
    for root in cache_roots():
        for folder, _, files in os.walk(root):
            for file in files:
                if not file.endswith(".py"):
                    continue
                path = os.path.join(folder, file)
                try:
                    text = open(path, errors="replace").read()
                except OSError:
                    continue
                for name in names:
                    if found[name] < args.per_name and f"def {name}(" in text:
                        found[name] += 1
                        shutil.copy(path, os.path.join(args.out, f"{name}.{found[name]}.py"))
                        config = path[:-3] + ".best_config"
                        if os.path.exists(config):
                            shutil.copy(config, os.path.join(args.out, f"{name}.{found[name]}.best_config"))
    for name, count in found.items():
        print(f"{count} file(s)  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
