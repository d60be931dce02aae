"""The README's "Mosaic Learning in your own project" examples run as they are written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def own_project_examples() -> list[str]:
    text = README.read_text()
    section = text.split("## Mosaic Learning in your own project", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_section_has_the_three_examples():
    assert len(own_project_examples()) == 3


@pytest.mark.slow
def test_own_project_examples_run_in_order(tmp_path, capsys, one_torch_thread):
    namespace: dict = {"__name__": "__readme__"}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # MosaicSummary writes summary.json into the Trainer's default_root_dir, the cwd
    try:
        for example in own_project_examples():
            exec(compile(example, str(README), "exec"), namespace)  # noqa: S102
    finally:
        os.chdir(cwd)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    first, second = printed[-2:]  # the two dicts the examples print
    assert "val/node_f1_mean" in first and "val/avg_model_acc" in first
    assert "val_acc/node_std" in second and "val_acc/avg_model" in second
    assert (tmp_path / "summary.json").is_file()
    assert namespace["trainer"].global_step == 100  # the dataset example trained its 100 steps
