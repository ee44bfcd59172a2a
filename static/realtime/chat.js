// A chat room: history rendered by the server, live messages after it, presence, typing,
// unread counts for the other rooms. Everything a user typed is inserted with textContent.
//
// No gap, no duplicate: the page was rendered with the room stream's position read *before*
// its rows (see realtime/chat.py, room_snapshot), and the client resumes from exactly there.
// A message both rendered and delivered is recognised by its row id and shown once. When the
// stream cannot fill a gap (resumed with recovered: false), the rows come from the database.
import { RealtimeClient, newId } from "./client.js";

const config = JSON.parse(document.getElementById("chat-config").textContent);
const list = document.getElementById("messages");
const status = document.getElementById("conn-status");
const typingLine = document.getElementById("typing");
const presenceList = document.getElementById("presence");
const membersList = document.getElementById("members");
const form = document.getElementById("send-form");
const input = document.getElementById("send-text");

const TYPING_SEND_EVERY_MS = 2500; // at most one typing frame per this, while keys are pressed
const TYPING_SHOW_MS = 4000; // a "typing" line fades if no new typing frame arrives
const UNREAD_KEY = `switchboard.unread.${config.me.id}`;

// Row ids at or below this are all on the page (rendered, or fetched from the database).
let dbHorizon = config.lastId;

const client = new RealtimeClient({ ephemeral: true, debug: new URLSearchParams(location.search).has("debug") });

// --- messages --------------------------------------------------------------------------------

function timeOf(iso) {
  const date = new Date(iso);
  return `${String(date.getHours()).padStart(2, "0")}:${String(date.getMinutes()).padStart(2, "0")}`;
}

function messageItem(message) {
  const item = document.createElement("li");
  item.className = message.user_id === config.me.id ? "msg mine" : "msg";
  item.dataset.id = String(message.id);
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = message.user;
  const time = document.createElement("time");
  time.dateTime = message.created_at;
  time.textContent = timeOf(message.created_at);
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = message.text;
  item.append(who, time, text);
  return item;
}

// Insert a chat row once, in id order (the database's order).
function addMessage(message) {
  if (list.querySelector(`li[data-id="${Number(message.id)}"]`)) return false;
  if (message.client_id) list.querySelector(`li.pending[data-client-id="${CSS.escape(message.client_id)}"]`)?.remove();
  if (typists.has(message.user)) {
    clearTimeout(typists.get(message.user));
    typists.delete(message.user);
    showTyping();
  }
  const item = messageItem(message);
  const later = [...list.querySelectorAll("li[data-id]")].find((li) => Number(li.dataset.id) > message.id);
  list.insertBefore(item, later || list.querySelector("li.pending"));
  scrollDown();
  return true;
}

function addNote(text) {
  const item = document.createElement("li");
  item.className = "note";
  item.textContent = text;
  list.insertBefore(item, list.querySelector("li.pending"));
  scrollDown();
}

function scrollDown() {
  list.scrollTop = list.scrollHeight;
}

async function catchUp(why) {
  // The stream could not say what was missed: read the rows after the last one we know.
  const answer = await fetch(`${config.messagesUrl}?after=${dbHorizon}`, { credentials: "same-origin" });
  if (!answer.ok) return addNote(`Could not load missed messages (${answer.status}); reload the page.`);
  const body = await answer.json();
  let added = 0;
  for (const message of body.messages) {
    if (addMessage(message)) added += 1;
    dbHorizon = Math.max(dbHorizon, message.id);
  }
  client.debug("caught up from the database:", why, added, "new");
  list.dataset.catchUps = String(Number(list.dataset.catchUps || 0) + 1); // visible to tests
  if (body.more) addNote("More messages were missed than fit here; reload the page to see them all.");
}

// --- sending ---------------------------------------------------------------------------------

let lastTypingSent = 0;

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  lastTypingSent = 0; // the next keystroke starts a new "typing"
  const id = newId();
  const pending = messageItem({ id: 0, user: config.me.username, user_id: config.me.id, text, created_at: new Date().toISOString() });
  pending.classList.add("pending");
  pending.removeAttribute("data-id");
  pending.dataset.clientId = id;
  list.append(pending);
  scrollDown();
  client.publish(config.stream, { kind: "chat", text }, { id }).catch((error) => {
    pending.classList.add("failed");
    pending.title = `Not sent: ${error.message}`;
  });
});

input.addEventListener("input", () => {
  if (Date.now() - lastTypingSent < TYPING_SEND_EVERY_MS || !input.value) return;
  if (client.publishVolatile(config.stream, { kind: "typing" })) lastTypingSent = Date.now();
});

// --- typing and presence ---------------------------------------------------------------------

const typists = new Map(); // username -> timer
function showTyping() {
  const names = [...typists.keys()];
  typingLine.textContent = names.length === 0 ? "" : `${names.join(", ")} ${names.length === 1 ? "is" : "are"} typing…`;
}

function personItem(name, { online, lastSeenMs } = {}) {
  const item = document.createElement("li");
  item.dataset.user = name;
  item.className = online ? "online" : "offline";
  item.textContent = name === config.me.username ? `${name} (you)` : name;
  if (!online) {
    const seen = document.createElement("span");
    seen.className = "hint";
    seen.textContent = lastSeenMs ? ` last seen ${ago(lastSeenMs)}` : " never seen";
    item.append(seen);
  }
  return item;
}

function ago(ms) {
  const secs = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (secs < 60) return "just now";
  if (secs < 3600) return `${Math.round(secs / 60)} min ago`;
  if (secs < 86400) return `${Math.round(secs / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}

function setOnline(name, online) {
  presenceList.querySelector(`li[data-user="${CSS.escape(name)}"]`)?.remove();
  if (online) presenceList.append(personItem(name, { online: true }));
  const member = membersList.querySelector(`li[data-user="${CSS.escape(name)}"]`);
  if (member) member.replaceWith(personItem(name, { online, lastSeenMs: Date.now() }));
}

// Presence events that arrive while a snapshot loads: applied again on top of it, since the
// snapshot may have been read before them (our own join, written just after we connected).
const presenceReplays = new Set();

async function loadPresence() {
  const replay = [];
  presenceReplays.add(replay);
  try {
    const answer = await fetch(config.presenceUrl, { credentials: "same-origin" });
    if (!answer.ok) return;
    const body = await answer.json();
    presenceList.replaceChildren(...body.online.map((p) => personItem(p.user, { online: true })));
    membersList.replaceChildren(
      ...body.members.map((m) => personItem(m.user, { online: m.online, lastSeenMs: m.last_seen_ms })),
    );
  } finally {
    presenceReplays.delete(replay);
    for (const event of replay) setOnline(event.user, event.event === "join");
  }
}

// --- unread counts for the rooms not in view -------------------------------------------------

function unreadCounts() {
  try {
    return JSON.parse(localStorage.getItem(UNREAD_KEY) || "{}");
  } catch {
    return {};
  }
}

function renderUnread(counts) {
  for (const item of document.querySelectorAll("#room-list li[data-room]")) {
    const badge = item.querySelector(".unread");
    const count = counts[item.dataset.room] || 0;
    badge.hidden = count === 0;
    badge.textContent = String(count);
  }
}

function bumpUnread(slug) {
  const counts = unreadCounts();
  counts[slug] = (counts[slug] || 0) + 1;
  localStorage.setItem(UNREAD_KEY, JSON.stringify(counts));
  renderUnread(counts);
}

{
  const counts = unreadCounts();
  delete counts[config.room]; // in view now: read
  localStorage.setItem(UNREAD_KEY, JSON.stringify(counts));
  renderUnread(counts);
  window.addEventListener("storage", (event) => event.key === UNREAD_KEY && renderUnread(unreadCounts()));
}

// --- the connection --------------------------------------------------------------------------

function setStatus(state, text) {
  status.dataset.state = state;
  status.textContent = text;
}

client.addEventListener("state", ({ detail }) => {
  if (detail.state === "waiting") setStatus("waiting", `connection lost; reconnecting in ${(detail.delayMs / 1000).toFixed(1)} s…`);
  else if (detail.state === "connecting") setStatus("connecting", "connecting…");
  else if (detail.state === "unauthorized") setStatus("down", "logged out: log in again to chat");
});

client.addEventListener("open", ({ detail }) => {
  if (detail.previousReplica && detail.previousReplica !== detail.replica) {
    setStatus("open", `reconnected to ${detail.replica} (${detail.previousReplica} went away)`);
  } else if (detail.previousReplica) {
    setStatus("open", `reconnected to ${detail.replica}`);
  } else {
    setStatus("open", `live on ${detail.replica}`);
  }
  // Where WebSockets are blocked the client falls back to Server-Sent Events: say so.
  if (client.transport === "sse") status.textContent += " (over SSE)";
  status.dataset.replica = detail.replica;
  loadPresence();
});

client.addEventListener("message", ({ detail: frame }) => {
  const payload = frame.payload || {};
  if (frame.stream === config.stream) {
    // A chat line names its author in `sender`, which only the server sets (from the login of
    // whoever posted it). A payload's own "user" is whatever the publisher wrote: a publish
    // from the API or a staff tool that looks like a chat line is shown as a note instead.
    if (payload.kind === "chat" && frame.sender) addMessage({ ...payload, user: frame.sender });
    else addNote(`${frame.sender || frame.origin}: ${typeof payload === "string" ? payload : JSON.stringify(payload)}`);
  } else if (frame.stream.startsWith("room:")) {
    if (payload.user_id !== config.me.id) bumpUnread(frame.stream.slice(5));
  } else if (frame.type === "push" || frame.type === "broadcast") {
    addNote(`${frame.type === "push" ? "to you" : "to everyone"}: ${payload.text ?? JSON.stringify(payload)}`);
  }
});

// A fresh subscription (no position) or a lost stretch: fill in from the database.
client.addEventListener("subscribed", ({ detail }) => detail.stream === config.stream && catchUp("subscribed"));
client.addEventListener("error", ({ detail }) => {
  // Removed from this private room (or it was made private) while the page was open.
  if (detail.code === "access_revoked" && detail.stream === config.stream) {
    setStatus("down", "you no longer have access to this room");
  }
});
client.addEventListener("reset", ({ detail }) => detail.stream === config.stream && catchUp(detail.reason));

client.addEventListener("presence", ({ detail }) => {
  if (detail.stream !== config.stream) return;
  for (const replay of presenceReplays) replay.push(detail);
  setOnline(detail.user, detail.event === "join");
});

client.addEventListener("typing", ({ detail }) => {
  if (detail.stream !== config.stream || detail.user_id === config.me.id) return;
  clearTimeout(typists.get(detail.user));
  typists.set(detail.user, setTimeout(() => { typists.delete(detail.user); showTyping(); }, TYPING_SHOW_MS));
  showTyping();
});

client.subscribe(config.stream, config.position || undefined);
for (const slug of config.rooms) client.subscribe(`room:${slug}`);
client.connect();
window.switchboard = client; // for the curious, and for the browser tests
scrollDown();
