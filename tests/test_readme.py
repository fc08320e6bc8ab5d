"""The README's first Python example runs as written, on the embedded default model and the offline web."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from kimi_swarm.backend import default_model_path
from kimi_swarm.launch import offline_web_tools
from kimi_swarm.offline_web import OfflineWeb

README = Path(__file__).resolve().parent.parent / "README.md"
MODEL_PATH = '"/models/Kimi-Linear-48B-A3B-Instruct"'
LIVE_WEB = "Web(WebConfig())"


def python_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_readme_examples_import_only_from_package_roots():
    roots = {"kimi_swarm", "kimi_swarm.backend", "kimi_swarm.tools", "kimi_swarm.kernels"}
    imports = [module for example in python_examples()
               for module in re.findall(r"^from (kimi_swarm\S*) import", example, re.MULTILINE)]
    assert imports and set(imports) <= roots, imports


@pytest.mark.slow
def test_readme_first_example_runs_on_the_default_model_and_the_offline_web():
    example = python_examples()[0]
    assert example.count(MODEL_PATH) == 1 and example.count(LIVE_WEB) == 1, "the README example changed its shape"
    source = example.replace(MODEL_PATH, repr(str(default_model_path()))).replace(LIVE_WEB, "offline_web_tools(site)")
    printed = io.StringIO()
    with OfflineWeb.start() as site, contextlib.redirect_stdout(printed):
        exec(compile(source, str(README), "exec"), {"__name__": "readme", "site": site,
                                                    "offline_web_tools": offline_web_tools})
    lines = printed.getvalue().splitlines()
    assert lines and lines[0].strip(), "the example printed no answer"
    assert re.match(r"tool_calls=\d+ agents=\d+ ", lines[-1]), lines[-1]
