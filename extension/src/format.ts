// Formatting and grouping of the synced tables: pure functions, tested without a DOM.

import type { EventRecord, GraphNode, IterationRecord, NodeId } from "./types.js";

export const KIND_COLORS: Record<string, { fill: string; stroke: string }> = {
  op: { fill: "#dbeafe", stroke: "#3b82f6" },
  fetch: { fill: "#fee2e2", stroke: "#ef4444" },
  feed: { fill: "#dcfce7", stroke: "#22c55e" },
  state: { fill: "#fef3c7", stroke: "#f59e0b" },
};

// The same colours as terra_nb.frames.plot, so the strip and the matplotlib plot agree.
export const MODE_COLORS: Record<string, string> = {
  eager: "#64748b", trace: "#f59e0b", coexec: "#2563eb", fallback: "#dc2626",
};

export const FLAG_COLOR = "#dc2626";

export function truncate(text: string, max: number): string {
  if (max < 2) return text.slice(0, Math.max(0, max));
  return text.length <= max ? text : text.slice(0, max - 1) + "…";
}

/** Second line of a node's box: its module and where it was called, or its kind for inputs. */
export function nodeSubtitle(node: GraphNode): string {
  return [node.module, shortLocation(node.location)].filter(Boolean).join(" · ") || node.kind;
}

/** "<terra-cell-3>:12" -> "cell 3:12"; "/home/me/train.py:40" -> "train.py:40". */
export function shortLocation(location: string): string {
  const cell = /^<terra-cell-(\d+)>:(\d+)$/.exec(location);
  if (cell) return `cell ${cell[1]}:${cell[2]}`;
  return location.split(/[\\/]/).pop() ?? location;
}

export function isFlagged(node: GraphNode): boolean {
  return (node.syncs ?? 0) > 0 || (node.fallbacks ?? 0) > 0;
}

/** "19 syncs · 1 fallback": the badge on a flagged node ("" when it has neither). */
export function badgeText(node: GraphNode): string {
  const parts: string[] = [];
  if (node.syncs > 0) parts.push(plural(node.syncs, "sync"));
  if (node.fallbacks > 0) parts.push(plural(node.fallbacks, "fallback"));
  return parts.join(" · ");
}

export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

export function formatMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
  if (ms < 10) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms.toFixed(1)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

export function formatSpeedup(x: number | null | undefined): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  return `${x.toFixed(2)}×`;
}

export interface EventGroup {
  location: string;
  kind: string;
  count: number;
  firstReason: string;
  firstIteration: number;
}

/**
 * Sync and fallback events grouped by (location, kind), fallbacks first, then the most frequent:
 * the places where Python forced the skeleton to wait or to trace again.
 */
export function groupEvents(events: EventRecord[], kinds: string[] = ["fallback", "sync"]): EventGroup[] {
  const groups = new Map<string, EventGroup>();
  for (const e of events) {
    if (!kinds.includes(e.kind)) continue;
    const location = e.location ?? "";
    const k = `${e.kind}\u0000${location}`;
    const g = groups.get(k);
    if (g) g.count++;
    else groups.set(k, { location, kind: e.kind, count: 1, firstReason: e.reason ?? "", firstIteration: e.iteration });
  }
  return [...groups.values()].sort(
    (a, b) => kinds.indexOf(a.kind) - kinds.indexOf(b.kind) || b.count - a.count || a.location.localeCompare(b.location),
  );
}

/** The events at one location, grouped by (kind, reason), for a node's details panel. */
export function eventsAt(events: EventRecord[], location: string): { kind: string; reason: string; count: number }[] {
  if (!location) return [];
  const groups = new Map<string, { kind: string; reason: string; count: number }>();
  for (const e of events) {
    if ((e.location ?? "") !== location) continue;
    const k = `${e.kind}\u0000${e.reason ?? ""}`;
    const g = groups.get(k);
    if (g) g.count++;
    else groups.set(k, { kind: e.kind, reason: e.reason ?? "", count: 1 });
  }
  return [...groups.values()];
}

export function nodesAtLocation(nodes: GraphNode[], location: string): NodeId[] {
  return location ? nodes.filter((n) => n.location === location).map((n) => n.id) : [];
}

/** "12 iterations: 1 trace, 9 coexec, 2 fallback" */
export function modeSummary(iterations: IterationRecord[]): string {
  const counts = new Map<string, number>();
  for (const it of iterations) counts.set(it.mode, (counts.get(it.mode) ?? 0) + 1);
  const order = Object.keys(MODE_COLORS);
  const parts = [...counts.entries()]
    .sort((a, b) => order.indexOf(a[0]) - order.indexOf(b[0]))
    .map(([mode, n]) => `${n} ${mode}`);
  return `${plural(iterations.length, "iteration")}${parts.length ? ": " + parts.join(", ") : ""}`;
}

/** Bar heights for the iteration strip, scaled to the slowest iteration (at least 2px each). */
export function barHeights(iterations: IterationRecord[], maxHeight: number): number[] {
  const walls = iterations.map((it) => (it.wall_ms !== null && Number.isFinite(it.wall_ms) ? it.wall_ms : 0));
  // The first (traced) iteration is often 100x slower; a log scale keeps the others visible.
  const top = Math.log1p(Math.max(0, ...walls));
  return walls.map((w) => (top > 0 ? Math.max(2, (Math.log1p(w) / top) * maxHeight) : 2));
}
