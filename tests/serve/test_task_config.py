"""task=serve and task=web_demo refuse a bad command line with one ConfigError, before plan.yaml
is written and before FastAPI, Streamlit or a model is loaded."""

from __future__ import annotations

import pytest

from internlm.api import run
from internlm.errors import ConfigError


@pytest.mark.parametrize("overrides, where", [
    (["task=serve"], "checkpoint"),
    (["task=serve", "checkpoint=/no/such/run"], "checkpoint"),
    (["task=serve", "checkpoint=hf:/no/such/export"], "checkpoint"),
    (["task=serve", "checkpoint=.", "task.port=70000"], "task.port"),
    (["task=serve", "checkpoint=.", "task.max_concurrent=0"], "task.max_concurrent"),
    (["task=serve", "checkpoint=.", "task.api_key= "], "task.api_key"),
    (["task=web_demo", "checkpoint=/no/such/run"], "checkpoint"),
    (["task=web_demo", "checkpoint=.", "task.max_length=5000"], "task.max_length"),
])
def test_bad_settings_fail_before_anything_is_written(tmp_path, overrides, where):
    with pytest.raises(ConfigError) as error:
        run(overrides, tmp_path / "run")
    assert error.value.where == where and error.value.fix
    assert not (tmp_path / "run" / "plan.yaml").exists()


def test_an_unknown_serve_option_names_the_close_match(tmp_path):
    with pytest.raises(ConfigError) as error:
        run(["task=serve", "checkpoint=.", "task.prot=8000"], tmp_path / "run")
    assert "prot" in str(error.value) and "port" in str(error.value)
