// The TraceGraph as SVG, from a computed Layout. Selection and highlighting are CSS classes on
// the node groups, so clicking never re-lays out the graph.

import { svg } from "./dom.js";
import { badgeText, FLAG_COLOR, isFlagged, KIND_COLORS } from "./format.js";
import type { Layout, PlacedNode } from "./layout.js";

let instances = 0; // marker ids must be unique when several explorers share a page

export interface GraphView {
  root: SVGSVGElement;
  nodes: Map<string, SVGGElement>; // by String(node id)
}

export function drawGraph(layout: Layout, onClick: (p: PlacedNode) => void): GraphView {
  const uid = `tn${++instances}`;
  const root = svg("svg", {
    width: layout.width, height: layout.height, viewBox: `0 0 ${layout.width} ${layout.height}`,
    class: "tn-svg", role: "img", "aria-label": "TraceGraph",
  });
  root.append(svg("defs", {},
    arrow(`${uid}-flow`, "#475569"), arrow(`${uid}-back`, "#8b5cf6"), arrow(`${uid}-data`, "#94a3b8")));

  const blocks = svg("g", { class: "tn-blocks" });
  for (const b of layout.blocks) {
    blocks.append(svg("g", { class: "tn-block", "data-block": b.block },
      svg("rect", { x: b.x, y: b.y, width: b.width, height: b.height, rx: 8 }),
      svg("text", { x: b.x + 6, y: b.y + 11 }, `block ${b.block}`)));
  }
  root.append(blocks);

  // Flow edges that branch carry their counts: how often each path was taken.
  const outDegree = new Map<string, number>();
  for (const e of layout.edges) {
    if (e.edge.kind === "flow") outDegree.set(String(e.edge.source), (outDegree.get(String(e.edge.source)) ?? 0) + 1);
  }
  const edges = svg("g", { class: "tn-edges" });
  for (const e of layout.edges) {
    const kind = e.edge.kind === "data" ? "data" : e.back ? "back" : "flow";
    edges.append(svg("path", {
      d: e.path, class: `tn-edge tn-edge-${kind}${e.far ? " tn-edge-far" : ""}`, "marker-end": `url(#${uid}-${kind})`,
      "data-source": String(e.edge.source), "data-target": String(e.edge.target),
    }));
    if (e.edge.kind === "flow" && (outDegree.get(String(e.edge.source)) ?? 0) > 1) {
      edges.append(svg("text", { x: e.mid[0] + 4, y: e.mid[1] + 3, class: "tn-edge-count" }, `×${e.edge.count}`));
    }
  }
  root.append(edges);

  const nodes = new Map<string, SVGGElement>();
  const layer = svg("g", { class: "tn-nodes" });
  for (const p of layout.nodes) {
    const g = drawNode(p);
    g.addEventListener("click", () => onClick(p));
    nodes.set(String(p.node.id), g);
    layer.append(g);
  }
  root.append(layer);
  return { root, nodes };
}

function drawNode(p: PlacedNode): SVGGElement {
  const n = p.node;
  const colors = KIND_COLORS[n.kind] ?? KIND_COLORS.op;
  const flagged = isFlagged(n);
  const g = svg("g", {
    class: `tn-node tn-kind-${n.kind}${flagged ? " tn-flagged" : ""}`, transform: `translate(${p.x},${p.y})`,
    "data-node-id": String(n.id), tabindex: 0,
  });
  const tip = [n.op, n.module, n.location, n.line && `  ${n.line.trim()}`, `kind ${n.kind}, ran ${n.count}×`, badgeText(n)];
  g.append(
    svg("title", {}, tip.filter(Boolean).join("\n")),
    // Hidden frames behind the box, shown by CSS when the node is selected or matched.
    svg("rect", { class: "tn-halo", x: -5, y: -5, width: p.width + 10, height: p.height + 10, rx: 10 }),
    svg("rect", {
      class: "tn-box", width: p.width, height: p.height, rx: 7, fill: colors.fill,
      stroke: flagged ? FLAG_COLOR : colors.stroke, "stroke-width": flagged ? 3 : 1.2,
    }),
    svg("text", { class: "tn-label", x: p.width / 2, y: 16 }, p.label),
    svg("text", { class: "tn-sub", x: p.width / 2, y: 30 }, p.subtitle),
  );
  if (flagged) {
    const text = badgeText(n);
    const w = text.length * 5.6 + 12;
    g.append(svg("g", { class: "tn-badge", transform: `translate(${p.width - w + 10},-10)` },
      svg("rect", { width: w, height: 16, rx: 8, fill: n.fallbacks > 0 ? FLAG_COLOR : "#ea580c" }),
      svg("text", { x: w / 2, y: 11.5 }, text)));
  }
  return g;
}

function arrow(id: string, color: string): SVGMarkerElement {
  return svg("marker", {
    id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
  }, svg("path", { d: "M0,0 L10,5 L0,10 z", fill: color }));
}
