import assert from "node:assert/strict";
import { test } from "node:test";

import {
  badgeText, barHeights, eventsAt, formatMs, formatSpeedup, groupEvents, modeSummary, nodesAtLocation, nodeSubtitle, shortLocation, truncate,
} from "../src/format.js";
import { EVENTS, ITERATIONS, LOOP } from "./fixture.js";

test("milliseconds and speedups, with null and NaN as a dash", () => {
  assert.equal(formatMs(0.9704), "0.97 ms");
  assert.equal(formatMs(12.34), "12.3 ms");
  assert.equal(formatMs(1500), "1.50 s");
  assert.equal(formatMs(null), "–");
  assert.equal(formatMs(NaN), "–");
  assert.equal(formatSpeedup(1.234), "1.23×");
  assert.equal(formatSpeedup(null), "–");
});

test("truncate keeps short text and marks cut text", () => {
  assert.equal(truncate("linear", 10), "linear");
  assert.equal(truncate("kaiming_uniform_", 8), "kaiming…");
  assert.equal(truncate("abc", 1), "a");
});

test("badges count syncs and fallbacks", () => {
  assert.equal(badgeText(LOOP.nodes.find((n) => n.id === 24)!), "9 syncs");
  assert.equal(badgeText(LOOP.nodes.find((n) => n.id === 27)!), "1 fallback");
  assert.equal(badgeText(LOOP.nodes.find((n) => n.id === 9)!), "");
  assert.equal(badgeText({ ...LOOP.nodes[0], syncs: 1, fallbacks: 2 }), "1 sync · 2 fallbacks");
});

test("subtitle: module and short location, or the kind of an input", () => {
  assert.equal(nodeSubtitle({ ...LOOP.nodes[0], module: "model.fc1" }), "model.fc1 · cell 1:7");
  assert.equal(nodeSubtitle(LOOP.nodes[0]), "cell 1:7");
  assert.equal(nodeSubtitle(LOOP.nodes.find((n) => n.id === "s0")!), "state");
  assert.equal(shortLocation("/home/me/proj/train.py:40"), "train.py:40");
  assert.equal(shortLocation("C:\\proj\\train.py:40"), "train.py:40");
});

test("events group by location and kind, fallbacks first; compile events are left out", () => {
  const groups = groupEvents(EVENTS);
  assert.deepEqual(groups.map((g) => [g.kind, g.location, g.count]), [
    ["fallback", "<terra-cell-1>:10", 1],
    ["sync", "<terra-cell-1>:14", 2],
  ]);
  assert.equal(groups[0].firstReason, "abs: an operation the trace has not seen here");
  assert.equal(groups[1].firstIteration, 3);
});

test("events at a location and nodes at a location", () => {
  assert.deepEqual(eventsAt(EVENTS, "<terra-cell-1>:14"), [{ kind: "sync", reason: "item: Python needs a value", count: 2 }]);
  assert.deepEqual(eventsAt(EVENTS, ""), []);
  assert.deepEqual(nodesAtLocation(LOOP.nodes, "<terra-cell-1>:10"), [11, 12, 27, 28]);
  assert.deepEqual(nodesAtLocation(LOOP.nodes, ""), []);
});

test("mode summary and log-scaled bars", () => {
  assert.equal(modeSummary(ITERATIONS), "3 iterations: 1 trace, 1 coexec, 1 fallback");
  assert.equal(modeSummary([]), "0 iterations");
  const bars = barHeights(ITERATIONS, 36);
  assert.equal(bars[0], 36);
  assert.ok(bars[1] >= 2 && bars[1] < bars[2] && bars[2] < 36);
  assert.deepEqual(barHeights([{ cell: 1, iteration: 1, mode: "trace", wall_ms: null, speedup: null }], 36), [2]);
});
