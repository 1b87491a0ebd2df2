"""terra_nb: imperative-symbolic co-execution of PyTorch programs, in Jupyter and in scripts.

Public names: :class:`Session`, :func:`session`, :func:`coexecute`, :func:`plot`.
``%load_ext terra_nb`` registers the ``%%terra`` cell magic (IPython is imported only then).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .session import CellReport, Session, coexecute, session


def plot(kind: str = "iterations", sess: Session | None = None):
    """Per-iteration time coloured by mode (``iterations``) or block times (``blocks``); needs matplotlib."""
    from .frames import plot as _plot

    return _plot(sess or session(), kind)


def load_ipython_extension(ipython) -> None:
    from .magic import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    from .magic import unload_ipython_extension as unload

    unload(ipython)


__all__ = ["Session", "CellReport", "session", "coexecute", "plot", "__version__"]
