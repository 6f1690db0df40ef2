"""List every registered component: group, name, config fields with their types and defaults."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from internlm import registry
from internlm.registry import register
from internlm.tasks.base import RunContext, Task


@dataclass
class ComponentsConfig:
    group: str | None = None  # show only this group (e.g. model, optimizer)


def type_name(tp) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or str(tp).replace("typing.", "")


def field_default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return type(value).__name__ + "(...)" if dataclasses.is_dataclass(value) else repr(value)
    return "(required)"


def render(only_group: str | None = None) -> str:
    lines = []
    for group, components in registry.groups().items():
        if only_group and group != only_group:
            continue
        lines.append(f"[{group}]")
        for component in components:
            lines.append(f"  {component.name}: {component.summary}")
            hints = typing.get_type_hints(component.config)
            for f in dataclasses.fields(component.config):
                lines.append(f"      {f.name}: {type_name(hints[f.name])} = {field_default(f)}")
    return "\n".join(lines)


@register("task", "components", ComponentsConfig)
class Components(Task):
    needs_tokenizer = False

    """Print the registry: what exists and how to configure it."""


    def run(self, ctx: RunContext) -> str:
        text = render(self.config.group)
        print(text)
        return text
