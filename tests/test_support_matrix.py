"""The README says what CI tests: its support table, pyproject's version ranges and .ci/environments agree.

CI builds one venv per line of ``.ci/environments``; the default one runs the README's own set-up
command (so it gets the newest TransformerLens pyproject admits), the others pin older releases. These
tests fail when one of the three is edited without the others, and check that the README's "Set up
and test" section holds exactly two commands and the main job, which is what CI runs.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests._tl_version import TL_VERSION

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib", reason="Python < 3.11 has no tomllib (the project's CI runs 3.11)")


def _ci_module():
    spec = importlib.util.spec_from_file_location("ci_readme", ROOT / ".ci" / "readme.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


CI = _ci_module()


def _declared(name: str) -> SpecifierSet:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = [Requirement(d) for d in deps if Requirement(d).name.replace("_", "-") == name]
    assert len(found) == 1, f"pyproject.toml must declare {name} once"
    return found[0].specifier


def _pinned(name: str) -> dict[str, str]:
    """CI environment -> the ``major.minor`` it pins for ``name`` (``transformer_lens==3.9.*`` -> ``3.9``)."""
    out = {}
    for env, install, _ in CI.environments():
        for req in install.split():
            if req != "README" and Requirement(req).name.replace("_", "-") == name:
                (spec,) = Requirement(req).specifier
                assert spec.operator == "==" and spec.version.endswith(".*"), f"{env}: pin {name} as ==X.Y.*"
                out[env] = spec.version[:-2]
    return out


def _table_header() -> list[str]:
    section = re.search(r"^## Supported TransformerLens versions\n(.*?)^## ", (ROOT / "README.md").read_text(),
                        flags=re.M | re.S)
    assert section, "README.md has no 'Supported TransformerLens versions' section"
    header = next(line for line in section.group(1).splitlines() if line.startswith("| |"))
    return [cell.strip() for cell in header.strip("|").split("|")][1:]


def _upper_major(spec: SpecifierSet) -> int:
    uppers = [Version(s.version) for s in spec if s.operator == "<"]
    assert len(uppers) == 1, f"{spec} needs one upper bound '<N'"
    return uppers[0].major - 1


def test_ci_has_a_readme_environment_and_pinned_ones() -> None:
    envs = CI.environments()
    assert envs[0][1] == "README", "the first CI environment runs the README's own commands"
    assert len(_pinned("transformer-lens")) == len(envs) - 1, "every other environment pins TransformerLens"


def test_readme_table_lists_exactly_the_versions_ci_tests() -> None:
    tl = _declared("transformer-lens")
    pinned = sorted(_pinned("transformer-lens").values(), key=Version)
    expected = [f"TL {v}" for v in pinned] + [f"TL {_upper_major(tl)}.x"]  # + what the README's set-up installs
    columns = [m.group(0) if (m := re.match(r"TL [0-9.x]+", c)) else c for c in _table_header()]
    assert columns == expected, f"README support table columns {columns}, CI tests {expected}"


def test_readme_table_names_the_transformers_versions_ci_installs() -> None:
    header = _table_header()
    for env, version in _pinned("transformers").items():
        tl = _pinned("transformer-lens")[env]
        column = next(c for c in header if c.startswith(f"TL {tl} "))
        assert f"transformers {version}" in column, (column, version)


def test_pyproject_admits_exactly_from_the_oldest_version_ci_tests() -> None:
    for name in ("transformer-lens", "transformers"):
        declared = _declared(name)
        pinned = sorted(_pinned(name).values(), key=Version)
        lowers = [Version(s.version) for s in declared if s.operator == ">="]
        assert lowers == [Version(pinned[0])], f"{name}: pyproject {declared}, oldest CI pin {pinned[0]}"
        assert all(Version(v) in declared for v in pinned), (name, declared, pinned)


def _range(name: str) -> str:
    """``transformer-lens>=2.18,<5`` (lower bound first, as the README writes it)."""
    spec = _declared(name)
    lower = next(s.version for s in spec if s.operator == ">=")
    upper = next(s.version for s in spec if s.operator == "<")
    return f"{name}>={lower},<{upper}"


def test_readme_and_the_support_matrix_doc_state_the_declared_ranges() -> None:
    readme, doc = (ROOT / "README.md").read_text(), (ROOT / "docs" / "support_matrix.md").read_text()
    for name in ("transformer-lens", "transformers"):
        assert f"`{_range(name)}`" in readme and f"`{_range(name)}`" in doc, _range(name)


def test_the_installed_transformerlens_is_one_ci_tests() -> None:
    tl = Version(TL_VERSION)
    assert tl in _declared("transformer-lens")
    pinned = _pinned("transformer-lens").values()
    assert f"{tl.major}.{tl.minor}" in pinned or tl.major == _upper_major(_declared("transformer-lens")), TL_VERSION


def test_readme_set_up_section_has_two_commands_then_the_main_job() -> None:
    commands = CI.commands()
    assert commands["setup"].startswith("pip install torch==") and 'pip install -e ".[dev]"' in commands["setup"]
    assert commands["tests"].split("#")[0].strip() == "python -m pytest"
    assert commands["main-job"].startswith("depass-tl attribute ") and "--html " in commands["main-job"]


def test_support_matrix_doc_names_the_same_versions() -> None:
    doc = (ROOT / "docs" / "support_matrix.md").read_text()
    for version in _pinned("transformer-lens").values():
        assert f"TL {version}" in doc
