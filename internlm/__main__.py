"""`python -m internlm [overrides]`: compose the config (Hydra) -> compile -> run the task.

Overrides are checked before Hydra runs, so a typo gets one message with a suggestion instead of
a traceback, and nothing has been written yet.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from internlm.config import store_root_schema
from internlm.errors import ConfigError
from internlm.paths import conf_dir
from internlm.preflight import check_overrides, rewrite_deprecated
from internlm.program import run_program

store_root_schema()
log = logging.getLogger("internlm")


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def hydra_entry(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        run_program(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        sys.exit(2)


def main() -> None:
    try:
        sys.argv[1:] = rewrite_deprecated(sys.argv[1:])
        check_overrides(sys.argv[1:])
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        sys.exit(2)
    hydra_entry()


if __name__ == "__main__":
    main()
