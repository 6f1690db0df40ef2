"""The programs `python -m internlm task=<name>` runs; each is a registered component.

Importing this package registers every task (and, through them, every component)."""

import importlib
import pkgutil

import internlm.components  # noqa: F401  (registers every component)

for _info in pkgutil.iter_modules(__path__, __name__ + "."):
    importlib.import_module(_info.name)
