"""The component registry: every building block is a class registered under (group, name).

A component declares a typed config (a dataclass). Registering it

* records the class so a config node can be turned into an object (`build`),
* stores the dataclass in Hydra's ConfigStore as ``<group>/<name>_schema``, so a YAML file in
  ``conf/<group>/`` only carries values: its defaults list starts with ``<name>_schema`` and
  Hydra type-checks every value against the dataclass while composing,
* makes the component discoverable (`python -m internlm task=components`).

Imports named by a string in a config (``instantiate_target``) are restricted to an allowlist of
module prefixes: a config read back from a checkpoint must not be able to run arbitrary code.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from hydra.core.config_store import ConfigStore

from internlm.errors import ConfigError, suggest

T = TypeVar("T")

ALLOWED_TARGET_PREFIXES = ("internlm.", "torch.optim.", "torch.nn.")


@dataclass(frozen=True)
class Component:
    group: str
    name: str
    cls: type
    config: type
    summary: str


_BY_KEY: dict[tuple[str, str], Component] = {}
_BY_CONFIG: dict[type, Component] = {}


def register(group: str, name: str, config: type) -> Callable[[T], T]:
    """Class decorator: ``@register("optimizer", "adamw", AdamWConfig)``."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"{group}/{name}: config must be a dataclass, got {config!r}")

    def decorate(cls: T) -> T:
        key = (group, name)
        if key in _BY_KEY and _BY_KEY[key].cls is not cls:
            raise ValueError(f"component {group}/{name} registered twice")
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        component = Component(group, name, cls, config, summary)
        _BY_KEY[key] = component
        _BY_CONFIG[config] = component
        ConfigStore.instance().store(group=group, name=f"{name}_schema", node=config)
        return cls

    return decorate


def get(group: str, name: str) -> Component:
    try:
        return _BY_KEY[(group, name)]
    except KeyError:
        names = sorted(n for g, n in _BY_KEY if g == group)
        raise ConfigError(
            f"no component '{name}' in group '{group}'",
            where=group,
            fix=f"choose one of: {', '.join(names)}" + suggest(name, names),
        ) from None


def component_of(config: Any) -> Component:
    """The component registered for a config object (a dataclass instance)."""
    try:
        return _BY_CONFIG[type(config)]
    except KeyError:
        raise ConfigError(f"{type(config).__name__} is not the config of a registered component") from None


def build(config: Any, *args: Any, **kwargs: Any) -> Any:
    """Instantiate the component whose config this is: ``cls(config, *args, **kwargs)``."""
    return component_of(config).cls(config, *args, **kwargs)


def groups() -> dict[str, list[Component]]:
    out: dict[str, list[Component]] = {}
    for (group, _), component in sorted(_BY_KEY.items()):
        out.setdefault(group, []).append(component)
    return out


def instantiate_target(path: str, *args: Any, **kwargs: Any) -> Any:
    """Import ``path`` (``module.attr``) only inside the allowlist, then call it."""
    return resolve_target(path)(*args, **kwargs)


def resolve_target(path: str) -> Any:
    if not path.startswith(ALLOWED_TARGET_PREFIXES):
        raise ConfigError(
            f"refusing to import '{path}': outside the allowed module prefixes",
            fix=f"targets must start with one of {', '.join(ALLOWED_TARGET_PREFIXES)}",
        )
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import '{path}': {exc}", fix="check the spelling of the target") from None
