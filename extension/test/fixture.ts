// A TraceGraph as terra_nb exports it: a training loop (10 -> ... -> 24 -> back to 10) whose
// iteration 10 took another branch (27, 28), plus two parameters as state inputs.
import type { EventRecord, GraphData, GraphNode, IterationRecord, NodeId } from "../src/types.js";

function node(id: NodeId, op: string, extra: Partial<GraphNode> = {}): GraphNode {
  return {
    id, op, module: "", location: `<terra-cell-1>:${typeof id === "number" ? id : 0}`, line: "",
    block: null, kind: "op", count: 12, syncs: 0, fallbacks: 0, ...extra,
  };
}

export const LOOP: GraphData = {
  nodes: [
    node(9, "randn", { block: 0, location: "<terra-cell-1>:7" }),
    node(10, "linear", { block: 1, location: "<terra-cell-1>:9" }),
    node(11, "pow", { block: 2, location: "<terra-cell-1>:10", line: "loss = out.pow(2).mean() if i != 9 else out.abs().mean()", fallbacks: 1 }),
    node(12, "mean", { block: 2, location: "<terra-cell-1>:10", fallbacks: 1 }),
    node(13, "backward", { block: 3 }),
    node(24, "item", { kind: "fetch", syncs: 9, line: "print(round(loss.item(), 4))" }),
    node(27, "abs", { block: 4, location: "<terra-cell-1>:10", fallbacks: 1, count: 1 }),
    node(28, "mean", { block: 4, location: "<terra-cell-1>:10", fallbacks: 1, count: 1 }),
    node("s0", "(2, 4) float32", { kind: "state", location: "" }),
  ],
  edges: [
    { source: 9, target: 10, kind: "flow", count: 1 },
    { source: 10, target: 11, kind: "flow", count: 11 },
    { source: 10, target: 27, kind: "flow", count: 1 },
    { source: 11, target: 12, kind: "flow", count: 11 },
    { source: 27, target: 28, kind: "flow", count: 1 },
    { source: 12, target: 13, kind: "flow", count: 11 },
    { source: 28, target: 13, kind: "flow", count: 1 },
    { source: 13, target: 24, kind: "flow", count: 12 },
    { source: 24, target: 10, kind: "flow", count: 11 },
    { source: 9, target: 10, kind: "data", count: 12 },
    { source: 12, target: 24, kind: "data", count: 11 },
    { source: "s0", target: 10, kind: "data", count: 12 },
    { source: "s0", target: 13, kind: "data", count: 12 },
  ],
  blocks: [
    { block: 0, nodes: [9] }, { block: 1, nodes: [10] }, { block: 2, nodes: [11, 12] },
    { block: 3, nodes: [13] }, { block: 4, nodes: [27, 28] },
  ],
};

export const EVENTS: EventRecord[] = [
  { iteration: 3, kind: "sync", reason: "item: Python needs a value", location: "<terra-cell-1>:14" },
  { iteration: 4, kind: "sync", reason: "item: Python needs a value", location: "<terra-cell-1>:14" },
  { iteration: 10, kind: "fallback", reason: "abs: an operation the trace has not seen here", location: "<terra-cell-1>:10" },
  { iteration: 1, kind: "compile", reason: "block 2", location: null },
];

export const ITERATIONS: IterationRecord[] = [
  { cell: 1, iteration: 1, mode: "trace", wall_ms: 690, speedup: null },
  { cell: 1, iteration: 2, mode: "coexec", wall_ms: 1.5, speedup: null },
  { cell: 1, iteration: 3, mode: "fallback", wall_ms: 2.5, speedup: null },
];
