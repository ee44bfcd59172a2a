// The home page: one WebSocket, its replica, an echo box and every frame received.
// Text is always inserted with textContent, never innerHTML: payloads are untrusted.
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

let attempt = 0;
let socket = null;

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/`);
  socket.addEventListener("open", () => { state.textContent = "open"; });
  socket.addEventListener("message", (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type === "hello") {
      attempt = 0;
      wsReplica.textContent = frame.replica;
      show("hello", `connected to ${frame.replica} as ${frame.user}`);
    } else if (frame.type === "echo") {
      show("echo", `${frame.replica} echoed ${JSON.stringify(frame.payload)}`);
    } else if (frame.type === "push" || frame.type === "broadcast") {
      const text = frame.payload && frame.payload.text !== undefined ? frame.payload.text : JSON.stringify(frame.payload);
      show(frame.type, `${text} (published on ${frame.origin})`);
    } else if (frame.type === "error") {
      show("error", `${frame.code}: ${frame.message}`);
    }
  });
  socket.addEventListener("close", (event) => {
    state.textContent = `closed (${event.code}), reconnecting`;
    if (event.code === 4401) { state.textContent = "logged out"; return; }
    // Full jitter, capped at 10 s: a replica's clients do not all come back at once.
    const delay = Math.random() * Math.min(10000, 500 * 2 ** attempt++);
    setTimeout(connect, delay);
  });
}

document.getElementById("echo-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("echo-text");
  if (socket && socket.readyState === WebSocket.OPEN && input.value) {
    socket.send(JSON.stringify({ type: "echo", payload: input.value }));
    input.value = "";
  }
});

connect();
