/* The queue: waiting and failed messages, retry now, delete; live through queue events. */
(function () {
  "use strict";
  var A = window.JDXA, h = A.h;
  var current = A.data();
  var showing = "queued";
  var skew = current.now - Date.now() / 1000;  // the server's clock minus this one

  function why(e, now) {
    if (e.corrupt) return "unreadable: " + e.corrupt;
    if (showing === "failed") return e.last_reply || "given up";
    var parts = [];
    if (e.waiting_for) parts.push("waiting: " + e.waiting_for);
    if (e.last_reply) parts.push((e.relay ? e.relay + ": " : "") + e.last_reply);
    if (!parts.length) parts.push(e.attempts ? "" : "not tried yet");
    return parts.join(" — ");
  }

  function nextTry(e, now) {
    if (showing === "failed") return "—";
    if (!e.next_try || e.next_try <= now) return "now";
    return "in " + A.duration(e.next_try - now) + " (" + A.time(e.next_try) + ")";
  }

  function act(method, url, done) {
    return A.api(method, url).then(function (result) {
      A.toast(done, "ok");
      return A.api("GET", "/api/v1/queue");
    }).then(render).catch(function (e) { A.toast(e.message, "error"); });
  }

  function row(e, now) {
    var pending = showing === "failed"
      ? Object.keys(e.outcomes).filter(function (r) { return e.outcomes[r].status === "failed"; })
      : (e.pending.length ? e.pending : e.recipients);
    var retryLabel = showing === "failed" ? "Queue again" : "Retry now";
    return h("tr", { "data-id": e.id }, [
      h("td", {}, [h("code", { text: e.id }), h("br"),
                   h("span", { className: "small", text: "from <" + e.from + ">" }), h("br"),
                   h("span", { className: "muted small", text: A.size(e.size) + ", received " + A.time(e.received_at) + " (" + A.duration(now - e.received_at) + " ago)" })]),
      h("td", {}, pending.map(function (r) { return h("div", { text: r }); })),
      h("td", { text: String(e.attempts) }),
      h("td", { text: nextTry(e, now) }),
      h("td", { className: "reply", text: why(e, now) }),
      h("td", { className: "actions" }, [
        h("button", { type: "button", className: "small-button", text: retryLabel, onclick: function () {
          act("POST", "/api/v1/queue/" + encodeURIComponent(e.id) + "/retry",
              showing === "failed" ? e.id + " is back in the queue" : e.id + " will be tried now");
        } }),
        h("button", { type: "button", className: "small-button danger", text: "Delete", onclick: function () {
          if (!window.confirm("Delete " + e.id + " for good?")) return;
          act("DELETE", "/api/v1/queue/" + encodeURIComponent(e.id), e.id + " deleted");
        } })
      ])
    ]);
  }

  function render(q) {
    if (q !== current) skew = q.now - Date.now() / 1000;
    current = q;
    var now = Date.now() / 1000 + skew;
    document.getElementById("count-queued").textContent = q.queued.count;
    document.getElementById("count-failed").textContent = q.failed.count;
    document.getElementById("tab-queued").setAttribute("aria-selected", showing === "queued");
    document.getElementById("tab-failed").setAttribute("aria-selected", showing === "failed");
    var part = q[showing];
    var body = document.querySelector("#entries tbody");
    A.clear(body);
    part.entries.forEach(function (e) { body.appendChild(row(e, now)); });
    var empty = document.getElementById("empty");
    empty.hidden = part.entries.length > 0;
    document.getElementById("entries").hidden = part.entries.length === 0;
    empty.textContent = showing === "failed" ? "No failed message is kept."
      : "The queue is empty: nothing waits for a relay.";
    document.getElementById("flush").hidden = showing === "failed";
  }

  document.getElementById("tab-queued").addEventListener("click", function () { showing = "queued"; render(current); });
  document.getElementById("tab-failed").addEventListener("click", function () { showing = "failed"; render(current); });
  document.getElementById("flush").addEventListener("click", function () {
    A.api("POST", "/api/v1/queue/flush").then(function (r) {
      A.toast(r.rescheduled + " message(s) will be tried now" + (r.busy ? ", " + r.busy + " being delivered" : ""), "ok");
      return A.api("GET", "/api/v1/queue");
    }).then(render).catch(function (e) { A.toast(e.message, "error"); });
  });
  // a queue event says the spool changed: fetch the listing (one request at a time)
  var fetching = false, again = false;
  function refresh() {
    if (fetching) { again = true; return; }
    fetching = true;
    A.api("GET", "/api/v1/queue").then(render)
      .catch(function (e) { A.toast(e.message, "error"); })
      .then(function () {
        fetching = false;
        if (again) { again = false; refresh(); }
      });
  }
  A.on("queue", refresh);
  render(current);
  // the "next try" countdown moves on without a reload
  window.setInterval(function () { if (document.visibilityState === "visible") render(current); }, 5000);
})();
