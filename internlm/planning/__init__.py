"""Config -> plan: the checks and derived numbers of a run, decided before anything is built.

Floor: above the components (it asks their configs and pure methods), below the runtime and the
tasks; it imports nothing from either.
"""

from internlm.planning.facts import Facts
from internlm.planning.plan import Plan, compile_plan, to_typed, write_plan

__all__ = ["Facts", "Plan", "compile_plan", "to_typed", "write_plan"]
