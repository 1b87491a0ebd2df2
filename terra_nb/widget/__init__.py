"""The graph explorer: the TraceGraph, its syncs and fallbacks, and the iterations, in a notebook.

Importing ``terra_nb`` does not import this package (nor anywidget); import it explicitly::

    from terra_nb.widget import GraphExplorer
    GraphExplorer.from_session(terra_nb.session())
"""

from .explorer import GraphExplorer

__all__ = ["GraphExplorer"]
