// anywidget entry of terra_nb.widget.GraphExplorer: renders the synced `graph`, `iterations` and
// `events`, and syncs back `selected` (the id of the op node the user clicked).

import { h } from "./dom.js";
import { nodesAtLocation, plural, shortLocation } from "./format.js";
import { drawGraph, type GraphView } from "./graphview.js";
import { layoutGraph, type PlacedNode } from "./layout.js";
import { detailsPanel, eventList, iterationStrip } from "./panels.js";
import type { EventRecord, GraphData, GraphNode, IterationRecord, NodeId } from "./types.js";

// The part of anywidget's model this widget uses (avoids a dependency on @anywidget/types).
export interface Model {
  get(name: string): any;
  set(name: string, value: unknown): void;
  save_changes(): void;
  on(event: string, callback: () => void): void;
  off(event: string, callback: () => void): void;
}

const EMPTY: GraphData = { nodes: [], edges: [], blocks: [] };

function render({ model, el }: { model: Model; el: HTMLElement }): () => void {
  let selected: NodeId | null = model.get("selected") ?? null;
  let showData = true;
  let view: GraphView | null = null;
  let scroller: HTMLElement | null = null;
  let side: HTMLElement | null = null;
  let placed = new Map<string, PlacedNode>();

  const graph = (): GraphData => ({ ...EMPTY, ...(model.get("graph") ?? {}) });
  const events = (): EventRecord[] => model.get("events") ?? [];
  const find = (id: NodeId | null): GraphNode | null =>
    id === null ? null : graph().nodes.find((n) => String(n.id) === String(id)) ?? null;

  function showDetails(): void {
    side?.querySelector(".tn-details")?.replaceWith(detailsPanel(find(selected), events()));
    view?.nodes.forEach((g, id) => g.classList.toggle("tn-selected", id === String(selected)));
    // The selected node's edges stand out: with many inputs, faint data edges are hard to follow.
    const id = String(selected);
    view?.root.querySelectorAll(".tn-edge").forEach((e) => e.classList.toggle("tn-edge-active",
      selected !== null && (e.getAttribute("data-source") === id || e.getAttribute("data-target") === id)));
  }

  function select(id: NodeId): void {
    selected = id;
    // `selected` is an Int trait: state and feed inputs ("s0") show their details but sync None.
    model.set("selected", typeof id === "number" ? id : null);
    model.save_changes();
    showDetails();
  }

  function highlight(location: string): void {
    const ids = new Set(nodesAtLocation(graph().nodes, location).map(String));
    view?.nodes.forEach((g, id) => g.classList.toggle("tn-match", ids.has(id)));
    const note = side?.querySelector(".tn-match-note");
    const where = shortLocation(location);
    if (note) note.textContent = ids.size ? `${plural(ids.size, "node")} at ${where} highlighted` : `no node at ${where}`;
    // Scroll only the graph's own container: scrollIntoView would also scroll the notebook.
    const first = [...ids].map((id) => placed.get(id)).find(Boolean);
    if (first && scroller) {
      scroller.scrollTop = Math.max(0, first.y - scroller.clientHeight / 2);
      scroller.scrollLeft = Math.max(0, first.x - scroller.clientWidth / 2);
    }
  }

  function draw(): void {
    const data = graph();
    const layout = layoutGraph(data);
    placed = new Map(layout.nodes.map((p) => [String(p.node.id), p]));
    view = drawGraph(layout, (p) => select(p.node.id));
    view.root.classList.toggle("tn-hide-data", !showData);
    scroller = h("div", { class: "tn-graph" },
      data.nodes.length ? view.root : h("p", { class: "tn-muted tn-empty" }, "No trace yet: run a cell with this session."));
    const toggle = h("input", { type: "checkbox", checked: showData });
    toggle.addEventListener("change", () => {
      showData = toggle.checked;
      view?.root.classList.toggle("tn-hide-data", !showData);
    });
    side = h("div", { class: "tn-side" },
      detailsPanel(null, []),
      eventList(events(), (g) => highlight(g.location)),
      h("p", { class: "tn-match-note tn-muted" }));
    const header = h("div", { class: "tn-header" },
      h("b", {}, "TraceGraph"),
      h("span", {}, `${plural(data.nodes.length, "node")} · ${plural(data.blocks.length, "block")}`),
      h("span", { class: "tn-key" },
        ...["op", "fetch", "feed", "state"].map((k) => h("span", { class: `tn-key-${k}` }, k))),
      h("label", {}, toggle, " data edges"));
    el.replaceChildren(h("div", { class: "tn-explorer" },
      header,
      iterationStrip((model.get("iterations") ?? []) as IterationRecord[]),
      h("div", { class: "tn-main" }, scroller, side)));
    showDetails();
  }

  const onSelected = () => {
    const id = model.get("selected");
    if (id !== null && id !== undefined && String(id) !== String(selected)) {
      selected = id;
      showDetails();
    }
  };
  // refresh() changes three traits in one message, which fires three change events in a row:
  // lay the graph out once for all of them.
  let queued = false;
  const redraw = () => {
    if (queued) return;
    queued = true;
    queueMicrotask(() => {
      queued = false;
      draw();
    });
  };
  const traits = ["graph", "iterations", "events"];
  traits.forEach((t) => model.on(`change:${t}`, redraw));
  model.on("change:selected", onSelected);
  draw();
  return () => {
    traits.forEach((t) => model.off(`change:${t}`, redraw));
    model.off("change:selected", onSelected);
  };
}

export default { render };
