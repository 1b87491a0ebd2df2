// The shapes the Python side syncs (terra_nb/graph/export.py and terra_nb/frames.py).

export type NodeId = number | string;
export type NodeKind = "op" | "fetch" | "feed" | "state";

export interface GraphNode {
  id: NodeId;
  op: string;
  module: string;
  location: string;
  line: string;
  block: number | null;
  kind: NodeKind;
  count: number;
  syncs: number;
  fallbacks: number;
}

export interface GraphEdge {
  source: NodeId;
  target: NodeId;
  kind: "flow" | "data";
  count: number;
}

export interface GraphData {
  nodes: GraphNode[];
  edges: GraphEdge[];
  blocks: { block: number; nodes: NodeId[] }[];
}

export interface IterationRecord {
  cell: number;
  iteration: number;
  mode: "eager" | "trace" | "coexec" | "fallback" | string;
  wall_ms: number | null;
  speedup: number | null;
  blocks?: number;
  syncs?: number;
  fallbacks?: number;
}

export interface EventRecord {
  cell?: number;
  iteration: number;
  kind: "sync" | "fallback" | "compile" | "error" | string;
  reason: string | null;
  location: string | null;
  duration_ms?: number | null;
}
