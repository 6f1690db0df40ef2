"""Check command-line overrides before Hydra runs: unknown keys get a close-match suggestion,
bad values and unknown config files one clear message, and nothing is written."""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

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
        if walked and not isinstance(node, DictConfig):
            parent = ".".join(walked)
            raise ConfigError(
                f"unknown config key '{key}': {parent} is a value, not a section with fields",
                where=parent,
                fix=f"set it directly ({parent}=<value>), or check the spelling of '{key}'",
            )
        if not isinstance(node, DictConfig) or part not in node:
            where = ".".join(walked) or "the root config"
            deeper = nested_paths(node, part, ".".join(walked)) if isinstance(node, DictConfig) else []
            hint = f" (did you mean '{deeper[0]}'?)" if deeper else suggest(part, children)
            raise ConfigError(
                f"unknown config key '{key}'",
                where=where,
                fix=f"'{part}' is not a field of {where}{hint}; fields: {', '.join(map(str, children)) or '(none)'}",
            )
        walked.append(part)
        node = node[part]


def nested_paths(node: DictConfig, name: str, prefix: str) -> list[str]:
    """Dotted paths below `node` whose last part is `name` (model.num_heads -> model.attention.num_heads)."""
    found = []
    for child in node.keys():
        value = node[child]
        path = f"{prefix}.{child}" if prefix else str(child)
        if child == name:
            found.append(path)
        elif isinstance(value, DictConfig):
            found += nested_paths(value, name, path)
    return found


def check_addition(cfg: DictConfig, key: str) -> None:
    """`+key=value` adds keys only to free-form dicts (e.g. `+data.sources.web={...}`): a typed
    section has exactly its declared fields, so an addition there is a typo of one of them."""
    parent_key, _, _ = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if parent is None:
        check_key(cfg, parent_key)  # names the missing part
    if isinstance(parent, DictConfig) and (not parent_key or dataclasses.is_dataclass(OmegaConf.get_type(parent))):
        check_key(cfg, key)


def _can_create_in(folder: Path) -> bool:
    """Try it (permissions alone do not say: root, read-only mounts, /proc): make and remove a folder."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".internlm-probe-", dir=folder))
        return True
    except OSError:
        return False


def check_run_dir(value: str) -> None:
    """`hydra.run.dir=...` must be a folder this user can create or write, before Hydra makes it."""
    if "${" in value:
        return
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"hydra.run.dir={value} is a file, not a folder", where="hydra.run.dir", fix="name a folder (new or existing)")
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    if existing is None or not _can_create_in(existing):
        raise ConfigError(
            f"cannot create or write the run folder {value}: {existing} is not writable",
            where="hydra.run.dir",
            fix="choose a folder you can write, e.g. hydra.run.dir=outputs/my-run",
        )


def listify_single_values(argv: list[str], base: DictConfig, parsed) -> list[str]:
    """`task.input=raw/*.jsonl` where the field is a list means `task.input=['raw/*.jsonl']`: one
    path or glob is the common case, and OmegaConf would refuse it ("str is not a ListConfig")."""
    rewritten = {}
    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra") or o.is_delete() or _is_group(o) or o.is_sweep_override():
            continue
        value = o.value()
        if not isinstance(value, str) or not isinstance(OmegaConf.select(base, key, default=None), ListConfig):
            continue
        quoted = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        rewritten[o.input_line] = f"{o.input_line.split('=', 1)[0]}=[{quoted}]"
    return [rewritten.get(arg, arg) for arg in argv]


def check_overrides(argv: list[str]) -> list[str]:
    """Raise ConfigError on the first bad override; returns argv with single values given to list
    fields made lists (`listify_single_values`)."""
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
        if key == "hydra.run.dir" and not o.is_sweep_override():
            check_run_dir(str(o.value()))
        if key.startswith("hydra") or o.is_delete() or _is_group(o):
            continue
        if o.is_sweep_override() and not multirun:
            raise ConfigError(
                f"'{o.input_line}' gives several values, which is a sweep",
                where=key,
                fix=f"add -m to run one job per value (python -m internlm -m {o.input_line}), or give one value",
            )
        if o.is_add() or o.is_force_add():
            check_addition(base, key)
        else:
            check_key(base, key)
    argv = listify_single_values(argv, base, parsed)
    if not multirun:  # values of sweeps are checked per job
        try:
            compose(split_overrides(argv)[0])
        except Exception as exc:
            raise ConfigError(_first_line(exc), where="overrides", fix="give the value the type the field declares") from None
    return argv


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
