"""The README's two set-up commands are what CI and users run: keep them true. The README stays a
short front page; the rest lives in docs/, whose links must lead somewhere."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 200


def _commands():
    return re.findall(r"```bash\n(.*?)\n```", README.read_text(), re.S)


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks (links and headings inside them are not ones)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``path``: lower case, punctuation dropped but
    for '-' and '_', spaces made '-'; a repeated heading gets -1, -2, ..."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _prose(path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(path: Path):
    """Relative links of ``path`` (inline ``[text](target)``), as (target file, anchor or '')."""
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file, _, anchor = target.partition("#")
        yield (path if not file else (path.parent / file).resolve()), anchor


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one():
    main_job, test_suite = _commands()[:2]
    assert "sparsify train zoo:lenet --data digits" in main_job and "sparsify inspect" in main_job
    assert "sparsify lenet.pt2 --mode uniform_filter --data digits --epsilon 0.01 --out out" in main_job
    assert test_suite.endswith("pytest -q")
    assert test_suite in (ROOT / ".ci" / "run").read_text()


def test_examples_and_benchmarks_are_documented():
    documented = "\n".join(page.read_text() for page in PAGES)
    scripts = [*ROOT.glob("examples/*.py"), *ROOT.glob("benchmarks/*.py")]
    for script in (s for s in scripts if not s.name.startswith("_")):  # _setup.py: shared helpers
        assert script.name in documented, f"{script.name} is mentioned neither in README.md nor in docs/*.md"


def test_readme_stays_short():
    lines = len(README.read_text().splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move detail to a page in docs/"


def test_readme_links_every_docs_page():
    linked = {file for file, _ in _links(README)}
    assert DOCS, "docs/ has no pages"
    for page in DOCS:
        assert page.resolve() in linked, f"README.md does not link docs/{page.name}"


def test_relative_links_point_to_existing_files_and_headings():
    broken = []
    for page in PAGES:
        for file, anchor in _links(page):
            where = f"{page.relative_to(ROOT)} -> {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}"
            if not file.exists():
                broken.append(f"{where}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{where}#{anchor}: no such heading")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_anchor_slugs_follow_github(tmp_path):
    # the rule the link check relies on, on headings of the kind these pages use
    page = tmp_path / "probe.md"
    page.write_text("# Zero prediction (Spatial): `sparsify MODEL --mode ...`\n## What `--out` receives\n"
                    "## Data\n## Data\n```\n# not a heading\n```\n")  # fmt: skip
    assert _anchors(page) == {"zero-prediction-spatial-sparsify-model---mode-", "what---out-receives",
                              "data", "data-1"}  # fmt: skip
