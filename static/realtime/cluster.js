// The cluster view: one card per replica, updated from the `ops` stream over a WebSocket.
// Every replica reports HAProxy's view of all of them, so a dead replica still shows as DOWN
// (reported by the others). Values are inserted with textContent only.
import { RealtimeClient } from "./client.js";

const initial = JSON.parse(document.getElementById("cluster-initial").textContent);
const container = document.getElementById("replicas");
const wsReplica = document.getElementById("ws-replica");
const wsState = document.getElementById("ws-state");
const redisSummary = document.getElementById("redis-summary");

const HISTORY_POINTS = 60;
// Three missed reports: a replica busy for a moment is not "silent", one that died is.
const SILENT_AFTER_MS = Math.max(3000, 3 * initial.interval_secs * 1000);
const SVG = "http://www.w3.org/2000/svg";

const cards = new Map(); // replica -> { root, fields, lines, history, lastAt, reports }
let haproxy = initial.haproxy || {};
let haproxyAt = 0;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function card(name) {
  let entry = cards.get(name);
  if (entry) return entry;
  const root = element("article", "replica");
  root.dataset.replica = name;
  root.dataset.reports = "0";
  const title = element("h2", "", name);
  const state = element("span", "state", "…");
  title.append(state);
  const list = element("dl");
  const fields = { state };
  for (const [key, label] of [["haproxy", "HAProxy"], ["connections", "sockets"], ["in", "in /s"],
    ["out", "out /s"], ["deliveries", "delivered /s"], ["lag", "loop lag"],
    ["repairs", "replayed · gaps"], ["redis", "Redis"], ["seen", "report"]]) {
    fields[key] = element("dd", "", "–");
    fields[key].dataset.field = key;
    list.append(element("dt", "", label), fields[key]);
  }
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", `0 0 ${HISTORY_POINTS - 1} 100`);
  svg.setAttribute("preserveAspectRatio", "none");
  // Frames in as a filled area, frames out as a line over it: an echo makes them equal, and
  // both must stay visible.
  const lines = {};
  for (const kind of ["in", "out"]) {
    lines[kind] = document.createElementNS(SVG, kind === "in" ? "polygon" : "polyline");
    lines[kind].setAttribute("class", kind);
    lines[kind].setAttribute("stroke-width", "2");
    lines[kind].setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(lines[kind]);
  }
  const peak = element("div", "legend");
  // Staff drain a replica from here: its sockets move to the others in reconnect slots.
  const button = element("button", "drain", "Drain");
  button.type = "button";
  button.dataset.replica = name;
  button.addEventListener("click", () => toggleDrain(name, entry));
  root.append(title, list, svg, peak, button);
  entry = { root, fields, svg, lines, peak, button, history: [], lastAt: 0, reports: 0, draining: false };
  cards.set(name, entry);
  // Keep the cards in name order whatever order the reports come in.
  const after = [...cards.keys()].sort().find((other) => other > name);
  container.insertBefore(root, after ? cards.get(after).root : null);
  return entry;
}

function drawSpark(entry) {
  const peak = Math.max(1, ...entry.history.flatMap((point) => [point.in, point.out]));
  // The x axis grows with the history (at least 10 slots, at most HISTORY_POINTS), so a page
  // opened a few seconds ago already draws across its width; the newest report is at the right.
  const slots = Math.max(10, entry.history.length);
  entry.svg.setAttribute("viewBox", `0 0 ${slots - 1} 100`);
  const offset = slots - entry.history.length;
  const y = (value) => (100 - (value / peak) * 94 - 3).toFixed(1);
  for (const kind of ["in", "out"]) {
    const points = entry.history.map((point, index) => `${offset + index},${y(point[kind])}`);
    if (kind === "in" && points.length) points.push(`${slots - 1},100`, `${offset},100`);
    entry.lines[kind].setAttribute("points", points.join(" "));
  }
  entry.peak.textContent = `scale 0–${peak}/s, last ${entry.history.length} reports`;
}

function csrfToken() {
  const found = document.cookie.split("; ").find((part) => part.startsWith("csrftoken="));
  return found ? found.slice("csrftoken=".length) : "";
}

async function toggleDrain(name, entry) {
  const undo = entry.draining;
  entry.button.disabled = true;
  const form = new URLSearchParams({ replica: name, ...(undo ? { undo: "1" } : {}) });
  try {
    const answer = await fetch("/cluster/drain", {
      method: "POST", body: form, credentials: "same-origin",
      headers: { "X-CSRFToken": csrfToken() },
    });
    const body = await answer.json();
    if (!answer.ok || body.ok === false) throw new Error(body.message || body.error || answer.status);
    entry.draining = !undo;
    entry.button.textContent = entry.draining ? `Undrain (moving ${body.sockets ?? 0})` : "Drain";
  } catch (error) {
    entry.button.textContent = `failed: ${error.message}`;
  } finally {
    entry.button.disabled = false;
  }
}

function showState(name, entry) {
  const view = haproxy[name];
  // A replica that drains fails its readiness check, so HAProxy calls it DOWN: it is draining.
  const draining = entry.draining && view && !view.status.startsWith("UP");
  const status = draining ? "draining" : view ? view.status : "unknown";
  const word = status.split(" ")[0];
  entry.fields.state.textContent = status;
  entry.fields.state.className = `state ${word.toLowerCase()}`;
  entry.root.dataset.state = word;
  entry.fields.haproxy.textContent = view ? `${view.check || "–"}, ${view.sessions} session${view.sessions === 1 ? "" : "s"}` : "not known";
}

function onReport(report) {
  const entry = card(report.replica);
  entry.reports += 1;
  entry.lastAt = Date.now();
  entry.root.dataset.reports = String(entry.reports);
  entry.fields.connections.textContent = report.connections;
  entry.fields.in.textContent = report.in_per_sec;
  entry.fields.out.textContent = report.out_per_sec;
  // The numbers /metrics exports too (switchboard_deliveries_total, _event_loop_lag_seconds…).
  if (report.deliveries_per_sec !== undefined) {
    entry.fields.deliveries.textContent = report.deliveries_per_sec;
    entry.fields.lag.textContent = `${report.loop_lag_ms} ms`;
    entry.fields.repairs.textContent = `${report.replayed_total} · ${report.gap_repairs_total}`;
  }
  entry.fields.redis.textContent = report.redis.reachable
    ? `ok, ${report.redis.latency_ms} ms` : `unreachable (${report.redis.error})`;
  if (typeof report.draining === "boolean" && !entry.button.disabled) {
    entry.draining = report.draining;
    if (!entry.button.textContent.startsWith("Undrain (") || !report.draining) {
      entry.button.textContent = report.draining ? "Undrain" : "Drain";
    }
  }
  entry.history.push({ in: report.in_per_sec, out: report.out_per_sec });
  if (entry.history.length > HISTORY_POINTS) entry.history.shift();
  drawSpark(entry);
  if (report.haproxy && report.at >= haproxyAt) {
    haproxy = report.haproxy;
    haproxyAt = report.at;
  }
  redisSummary.textContent = report.redis.reachable
    ? `reachable (${report.redis.latency_ms} ms from ${report.replica})`
    : `unreachable from ${report.replica}`;
  refresh();
}

// Once a second and on every report: states, and how long since each replica reported.
function refresh() {
  for (const name of Object.keys(haproxy)) card(name);
  for (const [name, entry] of cards) {
    showState(name, entry);
    const age = entry.lastAt ? Date.now() - entry.lastAt : null;
    entry.fields.seen.textContent = age === null ? "none yet" : `${(age / 1000).toFixed(1)} s ago`;
    entry.root.classList.toggle("silent", age === null || age > SILENT_AFTER_MS);
  }
  // Reports travel through Redis: when none arrives from anyone, Redis is the likely culprit.
  const ages = [...cards.values()].filter((entry) => entry.lastAt).map((entry) => Date.now() - entry.lastAt);
  if (ages.length && Math.min(...ages) > SILENT_AFTER_MS) {
    redisSummary.textContent = `no report from any replica for ${Math.round(Math.min(...ages) / 1000)} s (Redis down?)`;
  }
}

// The project's client: reconnects with backoff and heartbeats, and resumes `ops` after a
// reconnect. Its own storage key: this page must not move the positions the chat page keeps.
const client = new RealtimeClient({ storageKey: "switchboard.cluster-view" });
client.addEventListener("open", (event) => {
  wsReplica.textContent = event.detail.replica;
  client.subscribe("ops");
});
client.addEventListener("state", (event) => {
  wsState.textContent = event.detail.state;
  if (event.detail.state !== "open") wsReplica.textContent = "…";
});
client.addEventListener("message", (event) => {
  if (event.detail.type === "ops") onReport(event.detail.payload);
});
client.addEventListener("error", (event) => {
  wsState.textContent = `error: ${event.detail.message}`;
});

refresh();
setInterval(refresh, 1000);
client.connect();
