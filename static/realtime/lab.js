// The transport lab: one raw WebSocket (to show the mechanics) and the four ways a message
// can travel. Every log line names the replica that handled that step.
// Text is always inserted with textContent, never innerHTML: messages are user input.
const lab = document.getElementById("lab");
const CSRF = lab.dataset.csrf;
const logList = document.getElementById("lab-log");
const input = document.getElementById("lab-text");
const wsReplica = document.getElementById("ws-replica");
const wsState = document.getElementById("ws-state");
const wsConnection = document.getElementById("ws-connection");

const PATHS = { 1: "http", 3: "direct", 4: "relay" };
const LOG_MAX_LINES = 200;
const RECONNECT = Object.freeze({ baseMs: 500, capMs: 10000 });

let socket = null;
let socketInfo = { replica: null, connection: null };
let attempt = 0;
let counter = 0;
const sent = new Map(); // message id -> { way, sticky }
const seen = new Map(); // "way1-sticky" -> Map(replica -> count)
const tally = { 3: { sent: 0, arrived: 0 }, 4: { sent: 0, arrived: 0 } };

function nextId() {
  counter += 1;
  return `${Date.now().toString(36)}-${counter}`;
}

// One line in the log. `fields` become data-* attributes (what the e2e tests read).
function log(kind, text, fields = {}) {
  const item = document.createElement("li");
  item.dataset.kind = kind;
  for (const [key, value] of Object.entries(fields)) item.dataset[key] = String(value);
  const tag = document.createElement("span");
  tag.className = `tag ${kind}`;
  tag.textContent = kind === "http" ? "HTTP ←" : kind === "ws" ? "WS ←" : kind;
  const time = document.createElement("span");
  time.className = "hint";
  time.textContent = new Date().toLocaleTimeString();
  item.append(tag, " ", text, " ", time);
  logList.prepend(item);
  while (logList.children.length > LOG_MAX_LINES) logList.lastChild.remove();
}

function countSeen(button, replica) {
  const counts = seen.get(button) || new Map();
  counts.set(replica, (counts.get(replica) || 0) + 1);
  seen.set(button, counts);
  const parts = [...counts.entries()].sort().map(([name, n]) => `${name}×${n}`);
  document.getElementById(`seen-${button}`).textContent = parts.join(" · ");
}

function updateTally() {
  for (const way of [3, 4]) {
    document.getElementById(`way${way}-sent`).textContent = tally[way].sent;
    document.getElementById(`way${way}-arrived`).textContent = tally[way].arrived;
  }
}

function buttonName(way, sticky) {
  return way === 2 ? "way2" : `way${way}-${sticky ? "sticky" : "nosticky"}`;
}

// --- the socket -------------------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/`);
  socket.addEventListener("message", (event) => onFrame(JSON.parse(event.data)));
  socket.addEventListener("close", (event) => {
    socketInfo = { replica: null, connection: null };
    wsReplica.textContent = "…";
    if (event.code === 4401) { wsState.textContent = "logged out"; return; }
    wsState.textContent = `closed (${event.code}), reconnecting`;
    log("note", `socket closed (${event.code}); reconnecting`);
    // Full jitter: a replica's clients do not all come back at the same moment.
    const delay = Math.random() * Math.min(RECONNECT.capMs, RECONNECT.baseMs * 2 ** attempt++);
    setTimeout(connect, delay);
  });
}

function onFrame(frame) {
  if (frame.type === "hello") {
    attempt = 0;
    socketInfo = { replica: frame.replica, connection: frame.connection };
    wsReplica.textContent = frame.replica;
    wsConnection.textContent = frame.connection.slice(-8);
    wsState.textContent = "open";
    log("note", `socket open on ${frame.replica}`, { replica: frame.replica });
  } else if (frame.type === "echo" && frame.id && sent.has(frame.id)) {
    countSeen("way2", frame.replica);
    log("ws", `${frame.replica} echoed your frame (way 2)`, { way: 2, replica: frame.replica, id: frame.id });
  } else if (frame.type === "lab" && frame.way === 3) {
    const origin = sent.get(frame.id);
    tally[3].arrived += 1;
    updateTally();
    log("ws", `${frame.replica} wrote “${frame.text}” straight to your socket (way 3)`,
      { way: 3, replica: frame.replica, id: frame.id, sticky: origin && origin.sticky ? "yes" : "no" });
  } else if (frame.type === "push" && frame.payload && frame.payload.lab === 4) {
    const origin = sent.get(frame.payload.id);
    tally[4].arrived += 1;
    updateTally();
    log("ws", `“${frame.payload.text}” published on ${frame.origin}, delivered by ${socketInfo.replica} (way 4, seq ${frame.seq})`,
      { way: 4, replica: socketInfo.replica, origin: frame.origin, id: frame.payload.id,
        sticky: origin && origin.sticky ? "yes" : "no" });
  } else if (frame.type === "push" || frame.type === "broadcast") {
    const payload = frame.payload || {};
    const text = payload.text !== undefined ? payload.text : JSON.stringify(payload);
    log(frame.type, `${text} (published on ${frame.origin})`, { replica: frame.origin });
  } else if (frame.type === "error") {
    log("error", `${frame.code}: ${frame.message}`);
  }
}

// --- the buttons ------------------------------------------------------------------------------

async function send(way, sticky) {
  const text = input.value.trim() || "hello";
  const id = nextId();
  sent.set(id, { way, sticky });
  if (way === 2) {
    if (!socket || socket.readyState !== WebSocket.OPEN) { log("error", "the socket is not open"); return; }
    socket.send(JSON.stringify({ type: "echo", id, payload: { text } }));
    return;
  }
  if (way === 3 || way === 4) { tally[way].sent += 1; updateTally(); }
  const url = `/lab/${sticky ? "" : "nosticky/"}${PATHS[way]}`;
  let answer;
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": CSRF },
      body: JSON.stringify({ text, id, connection: socketInfo.connection }),
    });
    answer = await response.json();
  } catch (error) {
    log("error", `way ${way}: ${error}`);
    return;
  }
  if (!answer.ok) { log("error", `way ${way} on ${answer.replica}: ${answer.message}`); return; }
  countSeen(buttonName(way, sticky), answer.replica);
  const how = sticky ? "sticky" : "non-sticky";
  const fields = { way, replica: answer.replica, id, sticky: sticky ? "yes" : "no" };
  if (way === 1) {
    log("http", `${answer.replica} answered “${answer.text}” (way 1, ${how})`, fields);
  } else if (way === 3) {
    const where = socketInfo.replica ? `it is on ${socketInfo.replica}` : "it is not connected";
    const what = answer.held
      ? `${answer.replica} tried: it holds your socket and wrote to it`
      : `${answer.replica} tried: it does not hold your socket (${where}), so nothing was sent`;
    log("http", `${what} (way 3, ${how})`, { ...fields, held: answer.held ? "yes" : "no" });
  } else {
    log("http", `${answer.replica} published to your stream via Redis, seq ${answer.seq} (way 4, ${how})`,
      { ...fields, seq: answer.seq });
  }
}

for (const button of document.querySelectorAll("button[data-way]")) {
  button.addEventListener("click", () => send(Number(button.dataset.way), button.dataset.sticky === "yes"));
}
document.getElementById("log-clear").addEventListener("click", () => logList.replaceChildren());

connect();
