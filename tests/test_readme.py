"""The README's two set-up commands are what CI and users run: keep them true."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands():
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one():
    main_job, test_suite = _commands()[:2]
    assert "sparsify train zoo:lenet --data digits" in main_job and "sparsify inspect" in main_job
    assert "sparsify lenet.pt2 --mode uniform_filter --data digits --epsilon 0.01 --out out" in main_job
    assert test_suite.endswith("pytest -q")
    assert test_suite in (ROOT / ".ci" / "run").read_text()


def test_examples_and_benchmarks_are_documented():
    readme = (ROOT / "README.md").read_text()
    scripts = [*ROOT.glob("examples/*.py"), *ROOT.glob("benchmarks/*.py")]
    for script in (s for s in scripts if not s.name.startswith("_")):  # _setup.py: shared helpers
        assert script.name in readme, f"{script.name} is not mentioned in README.md"
