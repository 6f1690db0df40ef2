"""Importing this package registers every component with the registry (tasks register in
`internlm.tasks`, a floor above)."""

import importlib
import pkgutil


def _import_all(package) -> None:
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)


_import_all(importlib.import_module(__name__))
