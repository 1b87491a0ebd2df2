"""The skeleton's hot path in C (``_fastpath.c``), compiled on first use.

The C file needs only Python's headers and a C compiler (the one Python was built with, as
``sysconfig`` names it; Inductor needs one too). It is compiled once per source version and
Python build into the user's cache directory, then loaded from there. Where it cannot be built
(no compiler, no headers, Python before 3.11) the skeleton runs its Python path, which does
the same; ``TERRA_NB_NATIVE=0`` chooses the Python path.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("_fastpath.c")
_LOADED: list = []  # [module or None, why not]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "terra_nb"


def enabled() -> bool:
    return os.environ.get("TERRA_NB_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def load():
    """The compiled module, or None (see :func:`problem` for why)."""
    if not enabled():
        return None
    if not _LOADED:
        try:
            _LOADED[:] = [_build_and_import(), ""]
        except Exception as exc:  # no compiler, no headers: the Python path does the same work
            _LOADED[:] = [None, f"{type(exc).__name__}: {exc}"]
            warnings.warn(
                f"terra_nb: the skeleton's C path could not be built ({_LOADED[1][:300]}); co-execution "
                "runs its Python path, about twice as slow per op. Install a C compiler and Python's "
                "headers to build it, or set TERRA_NB_NATIVE=0 to choose the Python path silently.",
                RuntimeWarning, stacklevel=2)
    return _LOADED[0]


def problem() -> str:
    """Why the native path is not in use ("" when it is)."""
    if not enabled():
        return "disabled by TERRA_NB_NATIVE=0"
    load()
    return _LOADED[1]


def _build_and_import():
    if sys.version_info < (3, 11):
        raise RuntimeError("the native fast path needs Python 3.11 or newer")
    source = SOURCE.read_bytes()
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    digest = hashlib.sha256(source + sys.version.encode() + suffix.encode()).hexdigest()[:16]
    target = cache_dir() / f"_fastpath_{digest}{suffix}"
    if not target.exists():
        _compile(target)
    spec = importlib.util.spec_from_file_location("_fastpath", target)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {target}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [*cc, "-O2", "-shared", "-fPIC", f"-I{include}", str(SOURCE), "-o", str(out)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed: {result.stderr.strip()[-2000:]}")
        os.replace(out, target)  # atomic: a concurrent process sees the whole file or none
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for old in target.parent.glob(f"_fastpath_*{suffix}"):  # this Python's builds of other sources
        # (a build another process has loaded stays mapped there)
        if old != target and old.is_file():
            with contextlib.suppress(OSError):
                old.unlink()
