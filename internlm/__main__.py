"""`python -m internlm [overrides]`: compose the config (Hydra) -> compile -> run the task.

Overrides are checked before Hydra runs, so a typo gets one message with a suggestion instead of
a traceback, and nothing has been written yet. `--help` is answered from conf/ alone, without
importing the training stack.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from internlm.config import store_root_schema
from internlm.errors import ConfigError, LostPeerError
from internlm.paths import conf_dir

store_root_schema()
HELP_FLAGS = {"--help", "-h"}
HYDRA_FILES = {".hydra", "__main__.log", ".lock"}  # what Hydra (and the run-folder lock) put in a run folder before the program starts
EXISTING_RUN_DIRS: set[Path] = set()  # run folders named on the command line that existed before this run

USAGE = """usage: python -m internlm [group=option ...] [key=value ...] [-m] [--cfg job] [--hydra-help]

  group=option   pick a file of a config group     model=internlm_7b  data=store  task=plan
  key=value      change a field                    optimizer.lr=3e-4  trainer.max_steps=10
  -m             sweep (multirun)                  -m optimizer.lr=1e-4,3e-4
  --cfg job      print the composed config and exit
  task=components   every registered component and its fields
"""


def help_text() -> str:
    """Usage and the choices of every config group, read from conf/ (nothing is composed)."""
    lines = [USAGE, "config groups (conf/<group>/<option>.yaml):"]
    for group in sorted(p for p in conf_dir().iterdir() if p.is_dir() and p.name != "hydra"):
        options = sorted(f.stem for f in group.glob("*.yaml"))
        if options:
            lines.append(f"  {group.name:<11} {', '.join(options)}")
    return "\n".join(lines)


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def hydra_entry(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from internlm.program import run_program

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # Hydra made it for this run just now (not a folder the user named that already existed)
    fresh = run_dir.resolve() not in EXISTING_RUN_DIRS and set(os.listdir(run_dir)) <= HYDRA_FILES
    try:
        run_program(cfg, run_dir)
    except ConfigError as exc:
        # A refused run leaves no folder behind; a run that stopped after writing checkpoints or
        # metrics keeps them (an earlier run's folder is left as it was).
        if fresh and run_dir.is_dir() and set(os.listdir(run_dir)) <= HYDRA_FILES | {"plan.yaml"}:
            shutil.rmtree(run_dir, ignore_errors=True)
            remove_empty_parents(run_dir)
        print(exc.render(), file=sys.stderr)
        if isinstance(exc, LostPeerError):  # skip a teardown that can abort (exit -6) on the lost peer's threads
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        sys.exit(2)


def remove_empty_parents(run_dir: Path) -> None:
    """Hydra's default run folder, outputs/<date>/<time>: its now empty date folder (and outputs/)
    go too, up to the current directory."""
    if any(arg.startswith("hydra.run.dir=") for arg in sys.argv[1:]):
        return
    cwd, parent = Path.cwd().resolve(), run_dir.resolve().parent
    while cwd in parent.parents and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def main() -> None:
    if HELP_FLAGS & set(sys.argv[1:]):
        print(help_text())
        return
    # The training stack is imported only now: `--help` above never pays for it.
    from internlm.preflight import check_overrides, rewrite_deprecated

    try:
        sys.argv[1:] = rewrite_deprecated(sys.argv[1:])
        sys.argv[1:] = check_overrides(sys.argv[1:])
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        sys.exit(2)
    for arg in sys.argv[1:]:
        if arg.startswith("hydra.run.dir=") and Path(arg.partition("=")[2]).expanduser().exists():
            EXISTING_RUN_DIRS.add(Path(arg.partition("=")[2]).expanduser().resolve())
    lock = lock_named_run_dir(sys.argv[1:])
    try:
        hydra_entry()
    finally:
        if lock is not None:
            lock.release()


def lock_named_run_dir(argv: list[str]):
    """An existing run folder named on the command line is locked before Hydra writes its .hydra/
    into it: a second process on a folder in use is refused having touched nothing."""
    from internlm.runtime.checkpoint import RunFolderLock, is_launch_rank_zero

    if {"-m", "--multirun"} & set(argv) or not EXISTING_RUN_DIRS or not is_launch_rank_zero():
        return None
    run_dir = next(iter(EXISTING_RUN_DIRS))
    if not run_dir.is_dir():
        return None
    try:
        return RunFolderLock(run_dir).acquire()
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
