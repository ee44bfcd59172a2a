"""client.js's rules, run in Chromium against a scripted stand-in for the server's socket:
backoff bounds and resets, close-code classes, dead-peer detection, de-duplication, batched
acks, resume from sessionStorage, the outbox, and a final close().

The paths through real servers (failover, reload, 4401 after a logout) are in test_client.py and
test_chat.py; here each rule is driven frame by frame, so it is checked on its own.
"""

from __future__ import annotations

from typing import Any

from devtools.cluster import Cluster
from tests.e2e.conftest import LoginPage

# Shared by every scenario: a WebSocket stand-in the test scripts, and small helpers.
PRELUDE = r"""
  const sockets = [];
  class ScriptedSocket {
    constructor(url) { this.url = url; this.readyState = 0; this.sent = []; sockets.push(this); }
    send(text) { this.sent.push(JSON.parse(text)); }
    close() { this.readyState = 3; }
  }
  ScriptedSocket.OPEN = 1;
  window.WebSocket = ScriptedSocket;
  const { RealtimeClient, DEFAULTS } = await import("/static/realtime/client.js");
  const until = (cond, ms = 3000) => new Promise((resolve, reject) => {
    const start = performance.now();
    (function poll() {
      if (cond()) return resolve();
      if (performance.now() - start > ms) return reject(new Error("timed out waiting for " + cond));
      setTimeout(poll, 2);
    })();
  });
  // Proving that nothing happens takes a while of nothing happening.
  const quietFor = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const last = () => sockets[sockets.length - 1];
  const recv = (socket, frame) => socket.onmessage({ data: JSON.stringify(frame) });
  const hello = (socket, streams = {}) => {
    socket.readyState = 1;
    recv(socket, { type: "hello", replica: "d9", user: "t", user_id: 1, streams });
  };
  const drop = (socket, code = 1006) => {
    socket.readyState = 3;
    socket.onclose({ code, reason: "" });
  };
  // nextSocket(sockets.length, drop(s)): the count is read before the drop, then the reconnect
  // (after its backoff) is awaited.
  const nextSocket = async (before, _cause) => {
    await until(() => sockets.length > before);
    return last();
  };
  const make = (name, extra = {}) => {
    const client = new RealtimeClient({
      storageKey: `test.${name}.${Math.random()}`, backoffBaseMs: 8, backoffCapMs: 64,
      tryLaterBaseMs: 40, minUptimeMs: 60, ackBatchMs: 20,
      // These fake WebSockets fail on purpose: no falling back to SSE (its own e2e test).
      transport: "websocket", ...extra,
    });
    client.events = [];
    for (const type of ["state", "message", "reset", "open"]) {
      client.addEventListener(type, (e) => client.events.push({ type, detail: e.detail }));
    }
    return client;
  };
  const waits = (client) => client.events
    .filter((e) => e.type === "state" && e.detail.state === "waiting")
    .map((e) => ({ attempt: e.detail.attempt, delay: e.detail.delayMs, code: e.detail.code }));
"""


def run(page: Any, scenario: str) -> Any:
    return page.evaluate(f"async () => {{ {PRELUDE}\n{scenario} }}")


def scripted_page(browser_user: LoginPage) -> Any:
    return browser_user("carol", path="/chat/")  # a page of the site with no client of its own


def test_backoff_has_full_jitter_under_a_growing_cap_and_resets_only_after_min_uptime(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    result = run(
        scripted_page(browser_user),
        """
      const client = make("backoff");
      client.connect();
      for (let i = 0; i < 5; i++) await nextSocket(sockets.length, drop(last()));
      hello(last());                     // up, but dropped before minUptimeMs: the count goes on
      let socket = await nextSocket(sockets.length, drop(last()));
      hello(socket);
      await until(() => client.attempt === 0);   // stayed up minUptimeMs: the count resets
      drop(socket);
      const out = { frozen: Object.isFrozen(DEFAULTS), waits: waits(client) };
      client.close();
      return out;
    """,
    )
    assert result["frozen"]
    attempts = [w["attempt"] for w in result["waits"]]
    assert attempts == [1, 2, 3, 4, 5, 6, 1]
    for wait in result["waits"]:
        # The delay for the n-th retry is random in [0, min(cap 64, base 8 * 2^(n-1))].
        assert 0 <= wait["delay"] <= min(64, 8 * 2 ** (wait["attempt"] - 1))
    assert len({round(w["delay"], 3) for w in result["waits"]}) > 1  # jittered, not a fixed ladder


def test_try_later_backs_off_longer_4401_is_final_and_a_silent_peer_is_dropped(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    result = run(
        scripted_page(browser_user),
        """
      const client = make("codes", { heartbeatMs: 40, deadPeerMs: 40 });
      client.connect();
      let socket = await nextSocket(sockets.length, drop(last(), 4503));
      hello(socket);
      // Nothing comes from the server: a ping after heartbeatMs, then a new socket.
      const silent = socket;
      socket = await nextSocket(sockets.length);
      const pinged = silent.sent.some((f) => f.type === "ping");
      hello(socket);
      drop(socket, 4401);
      const before = sockets.length;
      await quietFor(200);
      const out = { waits: waits(client), pinged, state: client.state, final: client.final,
                    newSockets: sockets.length - before };
      client.close();
      return out;
    """,
    )
    try_later, dead_peer = result["waits"][0], result["waits"][1]
    assert try_later["code"] == 4503 and try_later["delay"] <= 40  # from tryLaterBaseMs
    assert dead_peer["code"] == 0 and result["pinged"]
    assert (result["state"], result["final"], result["newSockets"]) == ("unauthorized", True, 0)


def test_frames_are_delivered_once_acked_in_batches_and_resumed_after_a_reload(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    result = run(
        scripted_page(browser_user),
        """
      const key = `test.streams.${Math.random()}`;
      const client = make("streams", { storageKey: key });
      client.connect();
      const socket = last();
      hello(socket, { "user:1": { epoch: "e1", seq: 0 }, broadcast: { epoch: null, seq: 0 } });
      const push = (seq, epoch = "e1") => (
        { type: "push", stream: "user:1", seq, epoch, payload: seq }
      );
      for (const seq of [1, 2, 2, 1, 3]) recv(socket, push(seq));
      await until(() => socket.sent.some((f) => f.type === "ack"));
      const acks = socket.sent.filter((f) => f.type === "ack");
      recv(socket, {
        type: "resumed", stream: "user:1", recovered: false, reason: "epoch", epoch: "e2", seq: 0,
      });
      recv(socket, push(1, "e2"));
      const out = {
        messages: client.events
          .filter((e) => e.type === "message")
          .map((e) => [e.detail.epoch, e.detail.seq]),
        duplicates: client.stats.duplicates, acks,
        resets: client.events.filter((e) => e.type === "reset").length,
      };
      client.close();
      const reloaded = make("streams", { storageKey: key });  // a new page in the same tab
      reloaded.connect();
      out.resume = JSON.parse(new URL(last().url).searchParams.get("resume"));
      reloaded.close();
      return out;
    """,
    )
    assert result["messages"] == [["e1", 1], ["e1", 2], ["e1", 3], ["e2", 1]]
    assert result["duplicates"] == 2
    assert result["acks"] == [{"type": "ack", "stream": "user:1", "seq": 3}]  # one, for the highest
    assert result["resets"] == 1
    assert result["resume"] == {
        "user:1": {"epoch": "e2", "seq": 1},
        "broadcast": {"epoch": None, "seq": 0},
    }


def test_the_outbox_is_bounded_resent_until_acked_and_close_is_final(
    browser_user: LoginPage, healthy_cluster: Cluster
) -> None:
    result = run(
        scripted_page(browser_user),
        """
      const client = make("outbox", { outboxMax: 2 });
      client.connect();
      const first = client.publish("room:x", { n: 1 }, { id: "a" });  // offline: kept
      const second = client.publish("room:x", { n: 2 }, { id: "b" });
      let full = null;
      try { await client.publish("room:x", { n: 3 }); } catch (error) { full = error.message; }
      const one = last();
      hello(one);
      const sentFirst = one.sent.filter((f) => f.type === "publish").map((f) => f.id);
      recv(one, { type: "ack", id: "a", stream: "room:x", seq: 7 });
      const acked = await first;
      const two = await nextSocket(sockets.length, drop(one));
      hello(two);
      const sentSecond = two.sent.filter((f) => f.type === "publish").map((f) => f.id);
      client.close();
      let rejected = null, afterClose = null;
      try { await second; } catch (error) { rejected = error.message; }
      try { await client.publish("room:x", 1); } catch (error) { afterClose = error.message; }
      const before = sockets.length;
      await quietFor(100);
      return { full, sentFirst, ackedSeq: acked.seq, sentSecond, rejected, afterClose,
               state: client.state, newSockets: sockets.length - before };
    """,
    )
    assert "outbox full" in result["full"]
    assert result["sentFirst"] == ["a", "b"] and result["ackedSeq"] == 7
    assert result["sentSecond"] == ["b"]  # the acknowledged one is not sent again
    assert (
        result["rejected"] == "the client was closed"
        and result["afterClose"] == "the client is closed"
    )
    assert (result["state"], result["newSockets"]) == ("closed", 0)
