"""Run test modules with pytest when it (and tests/conftest.py's hypothesis) imports, else with a small
built-in runner (parametrize, skipif / skip marks, ``tmp_path``, ``monkeypatch``): the GPU machine has
no pytest.

    python3 scripts/run_cuda_tests.py tests/test_cuda.py tests/test_devices.py
    python3 scripts/run_cuda_tests.py --mini tests/test_cuda.py   # the built-in runner even with pytest

Exit status 0 when nothing failed.
"""

from __future__ import annotations

import importlib
import itertools
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _with_pytest(paths: list[str]) -> int | None:
    try:
        import hypothesis  # noqa: F401
        import pytest
    except ImportError:
        return None
    return int(pytest.main(["-q", "-rs", "-p", "no:cacheprovider", *paths]))


def _cases(fn):  # type: ignore[no-untyped-def]
    """(id, kwargs, skip reason or None) per parametrized case."""
    marks = fn.__dict__.get("_marks", [])
    axes = []
    for m in marks:
        if m.name == "parametrize":
            names = [n.strip() for n in m.args[0].split(",")] if isinstance(m.args[0], str) else list(m.args[0])
            values = []
            for v in m.args[1]:
                if type(v).__name__ == "_Param":
                    vals, skip = v.values, next((mk.kwargs.get("reason", "skip") for mk in v.marks if mk.name == "skip"), None)
                else:
                    vals, skip = ((v,) if len(names) == 1 else tuple(v)), None
                values.append((dict(zip(names, vals)), skip))
            axes.append(values)
    for combo in itertools.product(*axes) if axes else [()]:
        kwargs, skip = {}, None
        for kw, sk in combo:
            kwargs.update(kw)
            skip = skip or sk
        yield "-".join(str(v) for v in kwargs.values()), kwargs, skip


def _skip_reason(obj) -> str | None:  # type: ignore[no-untyped-def]
    marks = obj if isinstance(obj, list) else getattr(obj, "__dict__", {}).get("_marks", [])
    for m in marks:
        if m.name == "skip":
            return m.kwargs.get("reason", "skip")
        if m.name == "skipif" and m.args and m.args[0]:
            return m.kwargs.get("reason", "skipif")
    return None


def _mini(paths: list[str]) -> int:
    sys.path.insert(0, str(ROOT / "scripts" / "mini_pytest"))
    import pytest  # the stand-in

    print("pytest (or hypothesis) does not import here: running with scripts/run_cuda_tests.py's own runner")
    failed = passed = skipped = 0
    for path in paths:
        mod = importlib.import_module(Path(path).with_suffix("").as_posix().replace("/", "."))
        module_skip = None
        pm = getattr(mod, "pytestmark", [])
        module_skip = _skip_reason(pm if isinstance(pm, list) else [pm])
        for name in [n for n in dir(mod) if n.startswith("test_")]:
            fn = getattr(mod, name)
            if not callable(fn):
                continue
            for cid, kwargs, skip in _cases(fn):
                label = f"{path}::{name}[{cid}]" if cid else f"{path}::{name}"
                reason = module_skip or skip or _skip_reason(fn)
                if reason:
                    skipped += 1
                    print(f"SKIPPED {label}: {reason}")
                    continue
                params = fn.__code__.co_varnames[: fn.__code__.co_argcount]
                t0 = time.perf_counter()
                patch = pytest.MonkeyPatch()
                try:
                    with tempfile.TemporaryDirectory() as tmp:
                        extra = {"tmp_path": Path(tmp), "monkeypatch": patch}
                        fn(**kwargs, **{k: v for k, v in extra.items() if k in params})
                    passed += 1
                    print(f"PASSED {label} ({time.perf_counter() - t0:.1f}s)", flush=True)
                except pytest.SkipTest as e:
                    skipped += 1
                    print(f"SKIPPED {label}: {e}")
                except Exception:  # noqa: BLE001
                    failed += 1
                    print(f"FAILED {label}\n{traceback.format_exc()}", flush=True)
                finally:
                    patch.undo()
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


def main() -> int:
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    args = sys.argv[1:]
    mini = "--mini" in args  # the built-in runner even where pytest imports (to check the runner itself)
    paths = [a for a in args if a != "--mini"] or ["tests/test_cuda.py", "tests/test_devices.py"]
    rc = None if mini else _with_pytest(paths)
    return _mini(paths) if rc is None else rc


if __name__ == "__main__":
    sys.exit(main())
