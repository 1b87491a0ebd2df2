// The HTML around the graph: node details, the sync/fallback list and the iteration strip.

import { h, svg } from "./dom.js";
import {
  barHeights, eventsAt, formatMs, formatSpeedup, groupEvents, MODE_COLORS, modeSummary, plural, shortLocation,
  type EventGroup,
} from "./format.js";
import type { EventRecord, GraphNode, IterationRecord } from "./types.js";

const MAX_TABLE_ROWS = 500; // a long training loop has thousands of iterations; the strip shows all

export function detailsPanel(node: GraphNode | null, events: EventRecord[]): HTMLElement {
  if (!node) return h("div", { class: "tn-details tn-empty" }, "Click a node to see its op, its source line and its events.");
  const rows: [string, string][] = [
    ["op", node.op], ["module", node.module || "–"], ["kind", node.kind], ["ran", `${node.count}×`],
    ["block", node.block === null ? "none (runs synchronously)" : String(node.block)],
    ["location", node.location || "–"], ["syncs", String(node.syncs)], ["fallbacks", String(node.fallbacks)],
  ];
  const here = eventsAt(events, node.location);
  return h("div", { class: "tn-details", "data-node-id": String(node.id) },
    h("h4", {}, `Node ${node.id}`),
    h("table", {}, ...rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))),
    node.line ? h("pre", { class: "tn-source" }, node.line.trim()) : null,
    here.length
      ? h("ul", { class: "tn-reasons" }, ...here.map((e) => h("li", {},
        h("span", { class: `tn-pill tn-ev-${e.kind}` }, e.kind), ` ${e.reason} `, h("span", { class: "tn-muted" }, `(${e.count}×)`))))
      : h("p", { class: "tn-muted" }, "No sync or fallback at this line."));
}

export function eventList(events: EventRecord[], onPick: (g: EventGroup) => void): HTMLElement {
  const groups = groupEvents(events);
  const list = h("ol", { class: "tn-event-list" });
  for (const g of groups) {
    const item = h("li", { class: "tn-event", "data-location": g.location, "data-kind": g.kind, tabindex: 0 },
      h("span", { class: `tn-pill tn-ev-${g.kind}` }, g.kind),
      h("code", { title: g.location }, shortLocation(g.location) || "(no location)"),
      h("span", { class: "tn-count" }, `${g.count}×`),
      h("div", { class: "tn-reason" }, g.firstReason));
    item.addEventListener("click", () => {
      list.querySelectorAll(".tn-event.tn-active").forEach((e) => e.classList.remove("tn-active"));
      item.classList.add("tn-active");
      onPick(g);
    });
    list.append(item);
  }
  return h("div", { class: "tn-events" },
    h("h4", {}, "Where Python forced a sync or a fallback"),
    groups.length ? list : h("p", { class: "tn-muted" }, "Nowhere: no sync or fallback was recorded."));
}

export function iterationStrip(iterations: IterationRecord[]): HTMLElement {
  const height = 36;
  const bar = Math.max(2, Math.min(14, Math.floor(720 / Math.max(1, iterations.length))));
  const heights = barHeights(iterations, height);
  const strip = svg("svg", { class: "tn-strip", width: Math.max(1, iterations.length * bar), height });
  iterations.forEach((it, i) => {
    strip.append(svg("rect", {
      x: i * bar, y: height - heights[i], width: Math.max(1, bar - 1), height: heights[i],
      fill: MODE_COLORS[it.mode] ?? "#94a3b8", "data-mode": it.mode,
    }, svg("title", {}, `cell ${it.cell}, iteration ${it.iteration}: ${it.mode}, ${formatMs(it.wall_ms)}, speedup ${formatSpeedup(it.speedup)}`)));
  });
  const legend = h("span", { class: "tn-legend" }, ...Object.entries(MODE_COLORS).map(([mode, color]) =>
    h("span", {}, h("i", { style: `background:${color}` }), mode)));
  const shown = iterations.slice(0, MAX_TABLE_ROWS);
  const table = h("table", { class: "tn-iterations" },
    h("thead", {}, h("tr", {}, ...["cell", "iteration", "mode", "wall", "speedup", "syncs", "fallbacks"].map((c) => h("th", {}, c)))),
    h("tbody", {}, ...shown.map((it) => h("tr", {},
      h("td", {}, String(it.cell)), h("td", {}, String(it.iteration)),
      h("td", {}, h("span", { class: "tn-pill", style: `background:${MODE_COLORS[it.mode] ?? "#94a3b8"};color:#fff` }, it.mode)),
      h("td", {}, formatMs(it.wall_ms)), h("td", {}, formatSpeedup(it.speedup)),
      h("td", {}, String(it.syncs ?? "")), h("td", {}, String(it.fallbacks ?? ""))))));
  return h("div", { class: "tn-strip-box" },
    h("div", { class: "tn-strip-head" }, h("b", {}, modeSummary(iterations)), legend),
    iterations.length ? strip : null,
    iterations.length
      ? h("details", {}, h("summary", {}, iterations.length > MAX_TABLE_ROWS
        ? `table (first ${MAX_TABLE_ROWS} of ${plural(iterations.length, "iteration")})` : "table"), table)
      : null);
}
