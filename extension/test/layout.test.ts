import assert from "node:assert/strict";
import { test } from "node:test";

import { assignLayers, backEdges, layoutGraph, nodeWidth, orderLayers } from "../src/layout.js";
import type { GraphData } from "../src/types.js";
import { LOOP } from "./fixture.js";

test("the loop's closing edge is the only back edge", () => {
  const back = backEdges(LOOP.nodes.map((n) => n.id), LOOP.edges);
  assert.deepEqual([...back], ["24->10"]);
});

test("longest-path layers follow the flow; both branches share layers", () => {
  const layer = assignLayers(LOOP, backEdges(LOOP.nodes.map((n) => n.id), LOOP.edges));
  assert.equal(layer.get(9), 0);
  assert.equal(layer.get(10), 1);
  assert.equal(layer.get(11), 2);
  assert.equal(layer.get(27), 2);
  assert.equal(layer.get(13), 4, "a merge sits below the longer branch");
  assert.equal(layer.get(24), 5);
  assert.equal(layer.get("s0"), 0, "a state input sits one layer above its first consumer");
});

test("every flow edge that is not a back edge points down", () => {
  const back = backEdges(LOOP.nodes.map((n) => n.id), LOOP.edges);
  const layer = assignLayers(LOOP, back);
  for (const e of LOOP.edges.filter((e) => e.kind === "flow" && !back.has(`${e.source}->${e.target}`))) {
    assert.ok(layer.get(e.target)! > layer.get(e.source)!, `${e.source}->${e.target}`);
  }
});

test("barycenter ordering undoes a crossing", () => {
  // a and b in layer 0; their children listed in the crossing order (child of b first).
  const node = (id: string) => ({ id, op: id, module: "", location: "", line: "", block: null, kind: "op" as const, count: 1, syncs: 0, fallbacks: 0 });
  const g: GraphData = {
    nodes: ["a", "b", "xb", "xa"].map(node),
    edges: [
      { source: "a", target: "xa", kind: "flow", count: 1 },
      { source: "b", target: "xb", kind: "flow", count: 1 },
    ],
    blocks: [],
  };
  const layers = orderLayers(g, assignLayers(g, new Set()));
  assert.deepEqual(layers, [["a", "b"], ["xa", "xb"]]);
});

test("state and feed inputs sit left of the ops in their layer", () => {
  const layers = orderLayers(LOOP, assignLayers(LOOP, backEdges(LOOP.nodes.map((n) => n.id), LOOP.edges)));
  assert.deepEqual(layers[0], ["s0", 9]);
});

test("placed nodes do not overlap and fit in the drawing", () => {
  const layout = layoutGraph(LOOP);
  assert.equal(layout.nodes.length, LOOP.nodes.length);
  for (const a of layout.nodes) {
    assert.ok(a.x >= 0 && a.y >= 0 && a.x + a.width <= layout.width && a.y + a.height <= layout.height);
    for (const b of layout.nodes) {
      if (a === b) continue;
      const apart = a.x + a.width <= b.x || b.x + b.width <= a.x || a.y + a.height <= b.y || b.y + b.height <= a.y;
      assert.ok(apart, `${a.node.id} overlaps ${b.node.id}`);
    }
  }
});

test("edges: one path per edge, the back edge flagged, paths are finite", () => {
  const layout = layoutGraph(LOOP);
  assert.equal(layout.edges.length, LOOP.edges.length);
  assert.deepEqual(layout.edges.filter((e) => e.back).map((e) => `${e.edge.source}->${e.edge.target}`), ["24->10"]);
  for (const e of layout.edges) {
    assert.match(e.path, /^M/);
    assert.doesNotMatch(e.path, /NaN|Infinity/);
  }
});

test("only an input's data edges to distant layers are marked far", () => {
  const far = layoutGraph(LOOP).edges.filter((e) => e.far).map((e) => `${e.edge.source}->${e.edge.target}`);
  assert.deepEqual(far, ["s0->13"]);
});

test("block boxes enclose their nodes", () => {
  const layout = layoutGraph(LOOP);
  const box = layout.blocks.find((b) => b.block === 2)!;
  for (const id of [11, 12]) {
    const p = layout.nodes.find((n) => n.node.id === id)!;
    assert.ok(box.x < p.x && box.y < p.y && box.x + box.width > p.x + p.width && box.y + box.height > p.y + p.height);
  }
});

test("long labels are truncated to the box; an empty graph lays out", () => {
  const long = { ...LOOP.nodes[0], op: "a_very_long_operator_name_that_goes_on_and_on_forever" };
  const layout = layoutGraph({ nodes: [long], edges: [], blocks: [] });
  assert.ok(layout.nodes[0].label.endsWith("…"));
  assert.ok(layout.nodes[0].label.length * 7 <= nodeWidth(long));
  const empty = layoutGraph({ nodes: [], edges: [], blocks: [] });
  assert.deepEqual([empty.nodes, empty.edges, empty.blocks], [[], [], []]);
  assert.ok(Number.isFinite(empty.width) && Number.isFinite(empty.height));
});

test("a self-loop and a 3000-op chain lay out (no recursion limit)", () => {
  const node = (id: number) => ({ id, op: "add", module: "", location: "", line: "", block: null, kind: "op" as const, count: 1, syncs: 0, fallbacks: 0 });
  const n = 3000;
  const g: GraphData = {
    nodes: Array.from({ length: n }, (_, i) => node(i)),
    edges: [
      ...Array.from({ length: n - 1 }, (_, i) => ({ source: i, target: i + 1, kind: "flow" as const, count: 1 })),
      { source: n - 1, target: n - 1, kind: "flow", count: 5 },
    ],
    blocks: [],
  };
  const layout = layoutGraph(g);
  assert.equal(layout.nodes.at(-1)!.layer, n - 1);
  assert.equal(layout.edges.filter((e) => e.back).length, 1);
});
