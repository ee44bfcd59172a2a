// The home page: one WebSocket (through client.js), its replica, an echo box and every frame.
// Text is always inserted with textContent, never innerHTML: payloads are untrusted.
import { RealtimeClient } from "./client.js";

const log = document.getElementById("log");
const state = document.getElementById("ws-state");
const wsReplica = document.getElementById("ws-replica");

function show(kind, text) {
  const item = document.createElement("li");
  const tag = document.createElement("span");
  tag.className = `tag ${kind}`;
  tag.textContent = kind;
  item.append(tag, " ", text);
  log.prepend(item);
}

const client = new RealtimeClient({ debug: new URLSearchParams(location.search).has("debug") });

client.addEventListener("state", ({ detail }) => {
  if (detail.state === "waiting") state.textContent = `closed (${detail.code}), reconnecting`;
  else if (detail.state === "unauthorized") state.textContent = "logged out";
  else state.textContent = detail.state;
});
client.addEventListener("open", ({ detail }) => {
  wsReplica.textContent = detail.replica;
  const again = detail.previousReplica ? ` (reconnected; was ${detail.previousReplica})` : "";
  show("hello", `connected to ${detail.replica} as ${detail.user}${again}`);
});
client.addEventListener("echo", ({ detail }) => {
  show("echo", `${detail.replica} echoed ${JSON.stringify(detail.payload)}`);
});
client.addEventListener("message", ({ detail: frame }) => {
  const payload = frame.payload;
  const text = payload && payload.text !== undefined ? payload.text : JSON.stringify(payload);
  show(frame.type, `${text} (published on ${frame.origin})`);
});
client.addEventListener("reset", ({ detail }) => {
  show("reset", `${detail.stream}: some messages could not be recovered (${detail.reason})`);
});
client.addEventListener("error", ({ detail }) => show("error", `${detail.code}: ${detail.message}`));

document.getElementById("echo-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("echo-text");
  if (input.value && client.send({ type: "echo", payload: input.value })) input.value = "";
});

client.connect();
