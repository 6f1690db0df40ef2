"""Importing this package registers every component (and task) with the registry."""

import importlib
import pkgutil

import internlm.tasks


def _import_all(package) -> None:
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)


_import_all(importlib.import_module(__name__))
_import_all(internlm.tasks)
