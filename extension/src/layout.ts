// A layered (Sugiyama-style, much simplified) layout of the TraceGraph, with no DOM access so it
// can be unit-tested in node. Steps: remove back edges of the flow graph (DFS), longest-path
// layering, one barycenter pass to order each layer, then coordinates and edge paths.

import type { GraphData, GraphEdge, GraphNode, NodeId } from "./types.js";
import { nodeSubtitle, truncate } from "./format.js";

export interface LayoutOptions {
  nodeHeight: number;
  layerGap: number; // vertical space between layers: room for block labels and badges
  nodeGap: number;
  charWidth: number; // estimated width of one label character (12px sans-serif)
  minWidth: number;
  maxWidth: number;
  gutter: number; // left/right margin where long and back edges are routed
}

export const DEFAULTS: LayoutOptions = {
  nodeHeight: 38, layerGap: 34, nodeGap: 24, charWidth: 7, minWidth: 96, maxWidth: 250, gutter: 72,
};

export interface PlacedNode {
  node: GraphNode;
  x: number; // top-left corner
  y: number;
  width: number;
  height: number;
  layer: number;
  order: number;
  label: string; // truncated to fit the box
  subtitle: string;
}

export interface PlacedEdge {
  edge: GraphEdge;
  path: string; // SVG path data
  mid: [number, number]; // where a count label can sit
  back: boolean; // a flow edge that closes a loop (drawn upwards along the right gutter)
  far: boolean; // a data edge from an input (state or feed) to a consumer layers below
}

export interface BlockBox {
  block: number;
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface Layout {
  nodes: PlacedNode[];
  edges: PlacedEdge[];
  blocks: BlockBox[];
  width: number;
  height: number;
}

const key = (a: NodeId, b: NodeId) => `${a}->${b}`;

/** Flow edges that close a cycle, found by an iterative DFS that starts at nodes in trace order. */
export function backEdges(ids: NodeId[], edges: GraphEdge[]): Set<string> {
  const succ = new Map<NodeId, NodeId[]>(ids.map((id) => [id, []]));
  for (const e of edges) {
    if (e.kind === "flow" && succ.has(e.source) && succ.has(e.target)) succ.get(e.source)!.push(e.target);
  }
  const state = new Map<NodeId, 1 | 2>(); // 1: on the DFS stack, 2: finished
  const back = new Set<string>();
  for (const root of ids) {
    if (state.has(root)) continue;
    // Iterative: a TraceGraph can be a chain of thousands of ops, too deep for JS recursion.
    const stack: [NodeId, number][] = [[root, 0]];
    state.set(root, 1);
    while (stack.length) {
      const top = stack[stack.length - 1];
      const next = succ.get(top[0])!;
      if (top[1] >= next.length) {
        state.set(top[0], 2);
        stack.pop();
        continue;
      }
      const target = next[top[1]++];
      const seen = state.get(target);
      if (seen === 1) back.add(key(top[0], target));
      else if (seen === undefined) {
        state.set(target, 1);
        stack.push([target, 0]);
      }
    }
  }
  return back;
}

/**
 * Longest-path layer of every node over the acyclic flow edges. Nodes without flow edges (state
 * and feed inputs) go one layer above their first consumer, so their data edges stay short.
 */
export function assignLayers(graph: GraphData, back: Set<string>): Map<NodeId, number> {
  const ids = graph.nodes.map((n) => n.id);
  const known = new Set(ids);
  const flow = graph.edges.filter(
    (e) => e.kind === "flow" && known.has(e.source) && known.has(e.target) && !back.has(key(e.source, e.target)),
  );
  const indegree = new Map<NodeId, number>(ids.map((id) => [id, 0]));
  const succ = new Map<NodeId, NodeId[]>(ids.map((id) => [id, []]));
  const inFlow = new Set<NodeId>();
  for (const e of flow) {
    succ.get(e.source)!.push(e.target);
    indegree.set(e.target, indegree.get(e.target)! + 1);
    inFlow.add(e.source).add(e.target);
  }
  const layer = new Map<NodeId, number>();
  const queue = ids.filter((id) => indegree.get(id) === 0 && inFlow.has(id));
  for (const id of queue) layer.set(id, 0);
  for (let i = 0; i < queue.length; i++) {
    const u = queue[i];
    for (const v of succ.get(u)!) {
      layer.set(v, Math.max(layer.get(v) ?? 0, layer.get(u)! + 1));
      indegree.set(v, indegree.get(v)! - 1);
      if (indegree.get(v) === 0) queue.push(v);
    }
  }
  for (const id of ids) {
    if (layer.has(id)) continue;
    const below = graph.edges
      .filter((e) => e.source === id && layer.has(e.target))
      .map((e) => layer.get(e.target)!);
    layer.set(id, below.length ? Math.max(0, Math.min(...below) - 1) : 0);
  }
  return layer;
}

/** Nodes of each layer, ordered by one top-down barycenter pass over their upper neighbours. */
export function orderLayers(graph: GraphData, layer: Map<NodeId, number>): NodeId[][] {
  const inFlow = new Set(graph.edges.filter((e) => e.kind === "flow").flatMap((e) => [e.source, e.target]));
  const depth = Math.max(-1, ...layer.values()) + 1;
  const layers: NodeId[][] = Array.from({ length: depth }, () => []);
  for (const n of graph.nodes) layers[layer.get(n.id)!].push(n.id);
  const position = new Map<NodeId, number>();
  const upper = new Map<NodeId, NodeId[]>();
  for (const e of graph.edges) {
    const [a, b] = [layer.get(e.source), layer.get(e.target)];
    if (a === undefined || b === undefined || a === b) continue;
    const [lo, hi] = a < b ? [e.source, e.target] : [e.target, e.source];
    if (!upper.has(hi)) upper.set(hi, []);
    upper.get(hi)!.push(lo);
  }
  layers.forEach((ids, l) => {
    if (l > 0) {
      const score = new Map<NodeId, number>();
      ids.forEach((id, i) => {
        const ps = (upper.get(id) ?? []).map((p) => position.get(p)!);
        score.set(id, ps.length ? ps.reduce((s, p) => s + p, 0) / ps.length : i);
      });
      ids.sort((a, b) => score.get(a)! - score.get(b)!); // stable: ties keep trace order
    }
    // Inputs (state and feed tensors, outside the flow) go left of the ops: back edges enter
    // ops from the right gutter and would otherwise cross the inputs' boxes.
    const input = (id: NodeId) => (inFlow.has(id) ? 1 : 0);
    ids.sort((a, b) => input(a) - input(b));
    // Positions are centred so a layer of one node sits under the middle of a layer of three.
    ids.forEach((id, i) => position.set(id, i - (ids.length - 1) / 2));
  });
  return layers;
}

export function nodeWidth(node: GraphNode, o: LayoutOptions = DEFAULTS): number {
  const chars = Math.max(node.op.length, nodeSubtitle(node).length * 0.85);
  return Math.round(Math.min(o.maxWidth, Math.max(o.minWidth, chars * o.charWidth + 24)));
}

export function layoutGraph(graph: GraphData, options: Partial<LayoutOptions> = {}): Layout {
  const o = { ...DEFAULTS, ...options };
  const byId = new Map<NodeId, GraphNode>(graph.nodes.map((n) => [n.id, n]));
  const back = backEdges(graph.nodes.map((n) => n.id), graph.edges);
  const layer = assignLayers(graph, back);
  const layers = orderLayers(graph, layer);

  const widths = layers.map((ids) =>
    ids.reduce((sum: number, id) => sum + nodeWidth(byId.get(id)!, o), 0) + o.nodeGap * Math.max(0, ids.length - 1));
  const inner = Math.max(o.minWidth, ...widths);
  const placed = new Map<NodeId, PlacedNode>();
  layers.forEach((ids, l) => {
    let x = o.gutter + (inner - widths[l]) / 2;
    const y = o.layerGap + l * (o.nodeHeight + o.layerGap);
    ids.forEach((id, i) => {
      const node = byId.get(id)!;
      const width = nodeWidth(node, o);
      const maxChars = Math.floor((width - 16) / o.charWidth);
      placed.set(id, {
        node, x, y, width, height: o.nodeHeight, layer: l, order: i,
        label: truncate(node.op, maxChars), subtitle: truncate(nodeSubtitle(node), Math.floor(maxChars * 1.15)),
      });
      x += width + o.nodeGap;
    });
  });

  // Extents of each layer, for routing long edges around the nodes they would cross.
  const extent = layers.map((ids) => {
    const ps = ids.map((id) => placed.get(id)!);
    return [Math.min(...ps.map((p) => p.x)), Math.max(...ps.map((p) => p.x + p.width))];
  });
  const lanes = { left: 0, right: 0 };
  const inFlow = new Set(graph.edges.filter((e) => e.kind === "flow").flatMap((e) => [e.source, e.target]));
  const edges: PlacedEdge[] = [];
  for (const edge of graph.edges) {
    const s = placed.get(edge.source);
    const t = placed.get(edge.target);
    if (!s || !t) continue;
    const isBack = edge.kind === "flow" && back.has(key(edge.source, edge.target));
    // A parameter feeds every layer that uses it; drawn all the time, such edges bury the flow.
    const far = edge.kind === "data" && !inFlow.has(edge.source) && t.layer - s.layer > 1;
    edges.push({ edge, back: isBack, far, ...edgePath(s, t, extent, lanes, o, edge.kind === "data") });
  }

  const blocks: BlockBox[] = [];
  for (const b of graph.blocks) {
    const ps = b.nodes.map((id) => placed.get(id)).filter((p): p is PlacedNode => !!p);
    if (!ps.length) continue;
    const x = Math.min(...ps.map((p) => p.x)) - 8;
    const y = Math.min(...ps.map((p) => p.y)) - 18;
    blocks.push({
      block: b.block, x, y,
      width: Math.max(...ps.map((p) => p.x + p.width)) + 8 - x,
      height: Math.max(...ps.map((p) => p.y + p.height)) + 8 - y,
    });
  }
  return {
    nodes: [...placed.values()], edges, blocks,
    width: inner + 2 * o.gutter,
    height: layers.length * (o.nodeHeight + o.layerGap) + o.layerGap,
  };
}

const LANES = 6; // lanes per gutter before they are reused
const LANE_STEP = 8;

/**
 * SVG path of one edge. Adjacent layers: a straight-ish curve. Longer downward edges run in a
 * lane left or right of the layers they skip; upward (back) edges leave the source's right side
 * and enter the target's right side through the right gutter.
 */
export function edgePath(
  s: PlacedNode, t: PlacedNode, extent: number[][], lanes: { left: number; right: number },
  o: LayoutOptions = DEFAULTS, data = false,
): { path: string; mid: [number, number] } {
  const r = 6;
  const nudge = data ? s.width / 4 : 0; // data edges leave off-centre so they do not hide flow edges
  const sx = s.x + s.width / 2 + nudge;
  const tx = t.x + t.width / 2 + nudge;
  if (t.layer > s.layer) {
    const sy = s.y + s.height;
    const ty = t.y;
    const mid: [number, number] = [sx + (tx - sx) * 0.2 + 5, sy + 11]; // near the source: badges sit at the target
    // Data edges are faint and drawn behind the nodes, so they take the direct way; routing
    // them around layers filled the gutters with parallel lines.
    if (t.layer === s.layer + 1 || data) {
      const bend = Math.min(ty - sy, 3 * o.layerGap) / 2;
      return { path: `M${sx},${sy} C${sx},${sy + bend} ${tx},${ty - bend} ${tx},${ty}`, mid };
    }
    const between = extent.slice(s.layer + 1, t.layer);
    const left = Math.min(...between.map((e) => e[0]));
    const right = Math.max(...between.map((e) => e[1]));
    const useLeft = Math.abs((sx + tx) / 2 - left) <= Math.abs(right - (sx + tx) / 2);
    const step = LANE_STEP * ((useLeft ? lanes.left++ : lanes.right++) % LANES) + 14;
    const lx = useLeft ? left - step : right + step;
    const y1 = sy + o.layerGap / 2;
    const y2 = ty - o.layerGap / 2;
    const path = `M${sx},${sy} V${y1 - r} Q${sx},${y1} ${sx + Math.sign(lx - sx) * r},${y1} H${lx - Math.sign(lx - sx) * r} `
      + `Q${lx},${y1} ${lx},${y1 + r} V${y2 - r} Q${lx},${y2} ${lx + Math.sign(tx - lx) * r},${y2} `
      + `H${tx - Math.sign(tx - lx) * r} Q${tx},${y2} ${tx},${y2 + r} V${ty}`;
    return { path, mid };
  }
  // Upward or same layer: out of the right side, up the right gutter, into the target's right side.
  const top = Math.min(s.layer, t.layer);
  const span = extent.slice(top, Math.max(s.layer, t.layer) + 1);
  const lx = Math.max(...span.map((e) => e[1])) + 14 + LANE_STEP * (lanes.right++ % LANES);
  // In one layer (a self-loop included) leave low and come back high so the loop stays visible.
  const same = s.layer === t.layer;
  const sy = s.y + s.height * (same ? 0.75 : 0.5);
  const ty = t.y + t.height * (same ? 0.25 : 0.5);
  const x1 = s.x + s.width;
  const x2 = t.x + t.width;
  const path = `M${x1},${sy} H${lx - r} Q${lx},${sy} ${lx},${sy - r} V${ty + r} Q${lx},${ty} ${lx - r},${ty} H${x2}`;
  return { path, mid: [lx, (sy + ty) / 2] };
}
