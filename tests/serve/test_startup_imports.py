"""Registering the serve and web_demo tasks (done at every CLI start) imports none of their heavy
dependencies: those are imported when the task runs."""

from __future__ import annotations

import subprocess
import sys


def test_registering_the_tasks_imports_no_web_framework():
    code = ("import sys, internlm.tasks; from internlm import registry; "
            "registry.get('task', 'serve'); registry.get('task', 'web_demo'); "
            "print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'streamlit', 'openai', 'httpx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
