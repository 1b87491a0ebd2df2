"""The TraceGraph as JSON (for the graph explorer and for users) and as graphviz DOT.

JSON layout::

    {"nodes": [{"id", "op", "module", "location", "line", "block", "kind", "count",
                "syncs", "fallbacks"}],
     "edges": [{"source", "target", "kind": "flow" | "data", "count"}],
     "blocks": [{"block", "nodes"}]}

``kind`` is one of ``op`` (deferred into blocks), ``fetch`` (Python needed a value: runs
synchronously), ``feed`` (a tensor Python made, or an input that changes every iteration) and
``state`` (a tensor that outlives iterations: a parameter, a buffer, optimizer state).
State and feed inputs are nodes of their own with ids ``s<k>``.

Rendering DOT to SVG needs graphviz's ``dot`` binary; nothing else here does.
"""

from __future__ import annotations

from .tracegraph import EXTERNAL, TraceGraph

# The graph's node kinds as users see them (the JSON export and the ops table).
EXPORT_KIND = {"op": "op", "effect": "op", "sync": "fetch", "fetch": "fetch", "feed": "feed"}
_COLORS = {"op": "#dbeafe", "fetch": "#fecaca", "feed": "#dcfce7", "state": "#fef3c7"}


def graph_to_json(graph: TraceGraph, log=None) -> dict:
    block_of = graph.block_of()
    syncs, fallbacks = _events_by_location(log)
    nodes, edges = [], []
    for node in graph.live_nodes():
        location = str(node.line) if node.line else ""
        # (the events at every line the node ran at: one the cells share moved to the latest's)
        places = node.places | {location}
        nodes.append({
            "id": node.id, "op": node.name, "module": node.module, "location": location,
            "line": node.line.text if node.line else "", "block": block_of.get(node.id),
            "kind": EXPORT_KIND.get(node.kind, "op"), "count": node.count,
            "syncs": sum(syncs.get(p, 0) for p in places) if node.kind in ("fetch", "sync") else 0,
            "fallbacks": sum(fallbacks.get(p, 0) for p in places),
        })
        for succ, count in node.succ.items():
            if succ.kind != "root":
                edges.append({"source": node.id, "target": succ.id, "kind": "flow", "count": count})
    live = {n.id for n in graph.live_nodes()}
    for producer, _out, consumer, _slot in graph.data_edges():
        if producer in live and consumer in live:
            edges.append({"source": producer, "target": consumer, "kind": "data", "count": graph.nodes[consumer].count})
    externals: dict[int, str] = {}
    for node in graph.live_nodes():
        for slot, sources in enumerate(node.sources):
            if EXTERNAL not in sources:
                continue
            ref = node.ext_last[slot]
            obj = ref() if ref is not None else None
            varies = node.ext_varies[slot] or obj is None
            key = id(obj) if not varies else hash((node.id, slot))
            ext_id = externals.get(key)
            if ext_id is None:
                ext_id = externals[key] = f"s{len(externals)}"
                shape, dtype = node.in_meta[slot][0], node.in_meta[slot][1]
                shown = "nested" if shape is None else tuple(shape)  # (a nested tensor has no shape)
                nodes.append({"id": ext_id, "op": f"{shown} {str(dtype).replace('torch.', '')}",
                              "module": "", "location": "", "line": "", "block": None,
                              "kind": "feed" if varies else "state", "count": node.count,
                              "syncs": 0, "fallbacks": 0})
            edges.append({"source": ext_id, "target": node.id, "kind": "data", "count": node.count})
    blocks = [{"block": b, "nodes": [n.id for n in chain]} for b, chain in enumerate(graph.blocks())]
    return {"nodes": nodes, "edges": edges, "blocks": blocks}


def graph_to_dot(graph: TraceGraph, log=None):
    """A ``graphviz.Digraph``: one cluster per block, fetches in red, state in yellow, feeds in green."""
    import graphviz

    data = graph_to_json(graph, log)
    dot = graphviz.Digraph("tracegraph", graph_attr={"rankdir": "TB", "fontname": "Helvetica"},
                           node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica", "fontsize": "10"})
    by_block: dict = {}
    for node in data["nodes"]:
        by_block.setdefault(node["block"], []).append(node)
    for block, members in by_block.items():
        target = dot if block is None else graphviz.Digraph(f"cluster_{block}", graph_attr={"label": f"block {block}", "style": "dashed"})
        for node in members:
            label = node["op"] + (f"\\n{node['module']}" if node["module"] else "") + (f"\\n{node['location']}" if node["location"] else "")
            if node["syncs"] or node["fallbacks"]:
                label += f"\\n{node['syncs']} syncs, {node['fallbacks']} fallbacks"
            target.node(str(node["id"]), label, fillcolor=_COLORS[node["kind"]],
                        color="#dc2626" if node["fallbacks"] else "#475569")
        if target is not dot:
            dot.subgraph(target)
    for edge in data["edges"]:
        style = "solid" if edge["kind"] == "flow" else "dotted"
        dot.edge(str(edge["source"]), str(edge["target"]), label=str(edge["count"]) if edge["kind"] == "flow" else "", style=style)
    return dot


def _events_by_location(log) -> tuple[dict, dict]:
    if log is None:
        return {}, {}
    fallbacks: dict[str, int] = {}
    for event in log.events:
        if event.kind == "fallback":
            fallbacks[event.location] = fallbacks.get(event.location, 0) + 1
    return log.syncs_by_location(), fallbacks
