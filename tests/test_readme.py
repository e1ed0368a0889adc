"""The README's code runs, and its two quick-start commands are the real ones."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_has_python_examples():
    assert len(PYTHON_BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_block_runs(index):
    exec(compile(PYTHON_BLOCKS[index], f"README.md block {index}", "exec"), {})


def test_quick_start_commands():
    assert "pip install '.[experiments]' && python -m experiments.quickstart" in README
    marker = README.index("<!-- test-command")
    command = re.search(r"```bash\n(.*?)\n```", README[marker:], re.S).group(1)
    assert command == "pip install '.[test]' && python -m pytest -n auto"
    assert "test-command" in (ROOT / ".ci" / "run").read_text()
