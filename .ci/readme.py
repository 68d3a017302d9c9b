"""What CI reads from the README and .ci/environments, and how it checks the README's main job (stdlib only).

    python3 .ci/readme.py setup | tests | main-job   # print that README command
    python3 .ci/readme.py check-main-job DIR         # check the main job's output (DIR/stdout) and its page
    python3 .ci/readme.py environments               # print "name|install|runs" per CI environment

The README's "Set up and test" section holds two fenced bash blocks: the first has exactly two
commands (set-up, tests), the second the main-job command. CI runs them as they are written.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    if match is None:
        raise SystemExit(f"README.md has no '## {heading}' section")
    return match.group(1)


def commands(readme: Path = ROOT / "README.md") -> dict[str, str]:
    """``{"setup": ..., "tests": ..., "main-job": ...}`` from the README's "Set up and test" section."""
    blocks = re.findall(r"^```bash\n(.*?)^```", _section(readme.read_text(), "Set up and test"), flags=re.M | re.S)
    lines = [[line.strip() for line in block.splitlines() if line.strip()] for block in blocks]
    if len(lines) < 2 or len(lines[0]) != 2 or len(lines[1]) != 1:
        raise SystemExit(
            "README 'Set up and test' must hold a bash block with exactly two commands (set-up, tests) and then "
            f"a bash block with the main-job command; found {lines}"
        )
    return {"setup": lines[0][0], "tests": lines[0][1], "main-job": lines[1][0]}


def environments(path: Path = ROOT / ".ci" / "environments") -> list[tuple[str, str, str]]:
    """``(name, what pip installs, what runs)`` of each CI environment."""
    rows = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, install, runs = (part.strip() for part in line.split("|"))
            rows.append((name, install, runs))
    return rows


def check_main_job(folder: Path) -> None:
    """The main job (run in ``folder``, its output in ``folder/stdout``) printed the exact decomposition and
    wrote a page holding the prompt's tokens and numbers."""
    out = (folder / "stdout").read_text()
    html = folder / re.search(r"--html (\S+)", commands()["main-job"]).group(1)  # type: ignore[union-attr]
    clean = re.search(r"^clean logit\[' Mary'\] − logit\[' John'\] = ([+-]\d+\.\d+)$", out, flags=re.M)
    total = re.search(r"sum over components: ([+-]\d+\.\d+)", out)
    errors = [float(e) for e in re.findall(r"\|sum - clean\| = (\S+);", out)]
    problems = []
    if clean is None or total is None or clean.group(1) != total.group(1):
        problems.append("the printed sum over components is not the clean logit difference")
    if not errors or max(errors) > 1e-4:
        problems.append(f"completeness errors {errors} (want <= 1e-4)")
    if "top prediction there: ' Mary'" not in out:
        problems.append("the model's top prediction is not ' Mary'")
    page = html.read_text() if html.is_file() else ""
    if len(page) < 20_000:
        problems.append(f"{html} is missing or only {len(page)} bytes")
    for needle in ("Mary", "John", "drink", "store"):  # the page's numbers are checked by tests/test_explorer*.py
        if needle not in page:
            problems.append(f"{html} does not show {needle!r}")
    if re.search(r"<script[^>]+src=", page):
        problems.append(f"{html} loads a script from elsewhere (it must be self-contained)")
    if problems:
        raise SystemExit("README main job: " + "; ".join(problems))
    print(f"[ci] README main job: clean logit difference {clean.group(1)} (= the sum over components), "
          f"completeness error {max(errors):.1e}, {html.name} {len(page) / 1e3:.0f} KB")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what in ("setup", "tests", "main-job"):
        print(commands()[what])
    elif what == "check-main-job":
        check_main_job(Path(sys.argv[2]))
    elif what == "environments":
        print("\n".join("|".join(row) for row in environments()))
    else:
        raise SystemExit(__doc__)
