"""Check command-line overrides before Hydra runs: unknown keys get a close-match suggestion,
bad values and unknown config files one clear message, and nothing is written."""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

import internlm.tasks  # noqa: F401  (registers every schema the composition needs)
from internlm.config import store_root_schema
from internlm.errors import ConfigError, suggest
from internlm.paths import conf_dir

_MISSING = object()

# Old spellings kept for one release: the options of these tasks moved under `task.*`.
DEPRECATED_ROOTS = {"prepare.": "task.", "export.": "task."}


def rewrite_deprecated(argv: list[str]) -> list[str]:
    """`prepare.input=...` -> `task.input=...` (and `export.*`), with a one-line note each."""
    out = []
    for arg in argv:
        for old, new in DEPRECATED_ROOTS.items():
            bare = arg.lstrip("+~")
            if bare.startswith(old):
                fixed = arg[: len(arg) - len(bare)] + new + bare[len(old):]
                print(f"note: '{arg.split('=')[0]}' is deprecated; use '{fixed.split('=')[0]}' (options of the task live under task.*)", file=sys.stderr)
                arg = fixed
                break
        out.append(arg)
    return out


def split_overrides(argv: list[str]) -> tuple[list[str], bool]:
    """Hydra's own parser separates flags (--cfg, -m, ...) from key=value overrides."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    return list(args.overrides), bool(args.multirun)


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose, initialize_config_dir

    store_root_schema()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def check_key(cfg: DictConfig, key: str) -> None:
    """Raise with a suggestion when `key` (dotted) is not a field of the composed config."""
    node, walked = cfg, []
    for part in key.split("."):
        children = list(node.keys()) if isinstance(node, DictConfig) else []
        if not isinstance(node, DictConfig) or part not in node:
            where = ".".join(walked) or "the root config"
            raise ConfigError(
                f"unknown config key '{key}'",
                where=where,
                fix=f"'{part}' is not a field of {where}{suggest(part, children)}; "
                f"fields: {', '.join(map(str, children))}",
            )
        walked.append(part)
        node = node[part]


def check_overrides(argv: list[str]) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides, multirun = split_overrides(argv)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # malformed override syntax
        raise ConfigError(f"cannot parse the overrides: {exc}", fix="write overrides as key=value") from None
    group_choices = [o.input_line for o in parsed if _is_group(o)]
    for o in parsed:
        if _is_group(o) and not o.is_delete():
            check_choice(o)
    try:
        base = compose([o for o in group_choices if "," not in o])
    except Exception as exc:
        raise ConfigError(_first_line(exc), where="config group choice", fix=_group_fix(exc)) from None
    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra") or o.is_add() or o.is_force_add() or o.is_delete() or _is_group(o):
            continue
        check_key(base, key)
    if not multirun:  # values of sweeps are checked per job
        try:
            compose(overrides)
        except Exception as exc:
            raise ConfigError(_first_line(exc), where="overrides", fix="give the value the type the field declares") from None


def check_choice(override) -> None:
    """`model=internlm_8b`: the file must exist in conf/<group>/ (each value of a sweep too)."""
    group = override.key_or_group
    choices = sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
    values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
    for item in map(str, values):
        if item not in choices:
            raise ConfigError(
                f"no config '{item}' in group '{group}'",
                where=f"{group}={item}",
                fix=f"choose one of: {', '.join(choices)}{suggest(item, choices)}",
            )


def _is_group(override) -> bool:
    return (conf_dir() / override.key_or_group).is_dir()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        text = f"{text.splitlines()[0]}: {str(cause).strip().splitlines()[0]}"
    return text.splitlines()[0] if text else type(exc).__name__


def _group_fix(exc: Exception) -> str:
    text = str(exc)
    return text.splitlines()[-1] if "Available options" in text else "check the config group and file names (ls conf/)"
