/* The dashboard: figures from /api/v1/status, kept current by stats/listeners events. */
(function () {
  "use strict";
  var A = window.JDXA, h = A.h;
  var TLS = { implicit: "implicit TLS (from the first byte)", starttls: "STARTTLS offered",
              none: "none (plain text)" };
  var STATE = { ok: ["good", "ok"], failing: ["bad", "failing"], resting: ["warn", "resting"],
                unused: ["muted-badge", "not tried yet"] };
  var current = A.data();

  function set(id, value) { document.getElementById(id).textContent = value; }

  function renderListeners(l) {
    var stopped = l.state === "stopped";
    var badge = document.getElementById("listener-state");
    badge.textContent = stopped ? "SMTP stopped" : "SMTP listening";
    badge.className = "badge " + (stopped ? "bad" : "good");
    var stop = document.getElementById("listeners-stop");
    stop.hidden = stopped;
    stop.disabled = l.can_stop === false;
    stop.title = l.can_stop === false
      ? "serve --workers: the listeners are shared by every worker; stop the whole server instead" : "";
    document.getElementById("listeners-start").hidden = !stopped;
    document.getElementById("listener-hint").hidden = !stopped;
    var body = document.querySelector("#listeners tbody");
    A.clear(body);
    l.addresses.forEach(function (a) {
      body.appendChild(h("tr", {}, [
        h("td", {}, [h("code", { text: a.address })]),
        h("td", { text: (TLS[a.tls] || a.tls) + (a.proxy ? "; PROXY protocol (behind a load balancer)" : "") })
      ]));
    });
    set("listening-since", stopped ? "Stopped: connections are refused."
      : (l.since ? "Listening since " + A.time(l.since) + " (" + A.duration(Date.now() / 1000 - l.since) + ")" : ""));
  }

  function renderRelays(relays, now) {
    var body = document.querySelector("#relays tbody");
    A.clear(body);
    document.getElementById("no-relays").hidden = relays.length > 0;
    document.getElementById("relays").hidden = relays.length === 0;
    relays.forEach(function (r) {
      var state = STATE[r.state] || ["", r.state];
      var label = state[1];
      if (r.state === "resting" && r.resting_until) label = "resting until " + A.time(r.resting_until);
      if (r.state === "failing" && r.failures > 1) label = "failing (" + r.failures + " in a row)";
      var when = r.state === "ok" && r.last_success_at ? "worked at " + A.time(r.last_success_at)
        : (r.last_failure_at ? "failed at " + A.time(r.last_failure_at) : "");
      var quota = r.quota.limit ? r.quota.used + " of " + r.quota.limit
        : r.quota.used + " sent (no daily quota)";
      body.appendChild(h("tr", { "data-relay": r.name }, [
        h("td", {}, [h("strong", { text: r.name }), h("br"),
                     h("span", { className: "muted small", text: r.host + ":" + r.port })]),
        h("td", {}, [h("span", { className: "badge " + state[0], text: label }),
                     when ? h("div", { className: "muted small", text: when }) : null]),
        h("td", { className: "reply", text: r.last_reply || "—" }),
        h("td", { title: "starts over at 00:00 UTC", text: quota })
      ]));
    });
  }

  function render(s) {
    current = s;
    ["accepted", "relayed", "bounced", "rejected"].forEach(function (k) { set("t-" + k, s.today[k]); });
    set("t-sessions", s.sessions);
    set("t-queued", s.queue.queued);
    set("q-queued", s.queue.queued + " message(s)");
    set("q-oldest", s.queue.oldest_age_seconds === null ? "—"
      : A.duration(s.queue.oldest_age_seconds) + " old");
    set("q-failed", String(s.queue.failed));
    set("q-deferred", String(s.today.deferred));
    renderListeners(s.listeners);
    renderRelays(s.relays, s.now);
    var running = s.processes.filter(function (p) { return p.running; });
    var roles = running.map(function (p) { return p.role + " " + p.pid; }).join(", ");
    set("coverage", "Counts of today (" + s.today.day + ", local time) from every process using the spool"
      + (roles ? " (running: " + roles + ")" : "") + "; they lag by up to a second. "
      + "Relay quotas count UTC days.");
  }

  function switchListeners(action) {
    var button = document.getElementById("listeners-" + action);
    button.disabled = true;
    A.api("POST", "/api/v1/listeners/" + action).then(function (l) {
      current.listeners = l;
      renderListeners(l);
      A.toast(action === "stop" ? "SMTP listeners stopped" : "SMTP listeners started", "ok");
    }).catch(function (e) { A.toast(e.message, "error"); })
      .then(function () { button.disabled = false; });
  }

  document.getElementById("listeners-stop").addEventListener("click", function () { switchListeners("stop"); });
  document.getElementById("listeners-start").addEventListener("click", function () { switchListeners("start"); });
  A.on("stats", render);
  A.on("listeners", function (l) { current.listeners = l; renderListeners(l); });
  render(current);
  // "listening since … (how long)" moves on between events
  window.setInterval(function () { renderListeners(current.listeners); }, 10000);
})();
