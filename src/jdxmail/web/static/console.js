// jdxmail web console: the little JavaScript every page shares (no build step).
// JDX.api(method, url, body?)  fetch JSON with the page's CSRF token; on 4xx/5xx throws an
//                              Error: message = the server's "error", .fix, .status, .data
// JDX.on(kind, fn)             live events from GET /api/v1/events (one stream per page)
// JDX.toast(text, kind)        a short message in the corner ("ok", "error", "info")
"use strict";
(function () {
  const handlers = {};
  let source = null;

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  async function api(method, url, body) {
    const headers = { "Accept": "application/json", "X-CSRF-Token": csrfToken() };
    const init = { method: method, headers: headers, credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(url, init);
    const type = response.headers.get("Content-Type") || "";
    const data = type.includes("application/json") ? await response.json() : await response.text();
    if (!response.ok) {
      // the server's "error" text as the message; its "fix" (if any) as error.fix
      const text = (data && data.error) ? data.error : (response.status + " " + response.statusText);
      const error = new Error(text);
      error.status = response.status;
      error.fix = (data && data.fix) ? data.fix : "";
      error.data = data;
      throw error;
    }
    return data;
  }

  function setLive(state) {
    const badge = document.getElementById("jdx-live");
    if (!badge) { return; }
    badge.className = "live " + state;
    const text = badge.querySelector(".live-text");
    if (text) { text.textContent = state === "on" ? "live" : (state === "off" ? "offline" : "connecting"); }
  }

  function connect() {
    if (source || !document.body || !document.body.dataset.live) { return; }
    source = new EventSource("/api/v1/events");
    source.onopen = function () { setLive("on"); };
    source.onerror = function () { setLive("off"); };
    Object.keys(handlers).forEach(listen);
  }

  function listen(kind) {
    source.addEventListener(kind, function (event) {
      let data = null;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      (handlers[kind] || []).forEach(function (fn) { fn(data); });
    });
  }

  function on(kind, fn) {
    if (!handlers[kind]) {
      handlers[kind] = [];
      if (source) { listen(kind); }
    }
    handlers[kind].push(fn);
  }

  function toast(text, kind) {
    const box = document.getElementById("jdx-toasts");
    if (!box) { return; }
    const item = document.createElement("div");
    item.className = "toast " + (kind || "info");
    item.setAttribute("role", kind === "error" ? "alert" : "status");
    item.textContent = text;
    box.appendChild(item);
    setTimeout(function () { item.remove(); }, kind === "error" ? 8000 : 4000);
  }

  window.JDX = { api: api, on: on, toast: toast, csrfToken: csrfToken };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", connect);
  } else {
    connect();
  }
  window.addEventListener("pagehide", function () { if (source) { source.close(); } });
})();
