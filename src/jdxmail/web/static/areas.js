/* Helpers shared by the dashboard, queue, logs and diagnostics pages (webpages).
   Everything shown is put in with textContent: log lines and replies come from
   SMTP clients and relays, never from us. */
(function () {
  "use strict";

  function h(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) return;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else if (key.slice(0, 2) === "on") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function time(epoch) {
    if (!epoch) return "—";
    var d = new Date(epoch * 1000);
    var today = new Date();
    var clock = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    if (d.toDateString() === today.toDateString()) return clock;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + clock;
  }

  function duration(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor(seconds % 3600 / 60) + " min";
    return Math.floor(seconds / 86400) + " d " + Math.floor(seconds % 86400 / 3600) + " h";
  }

  function size(bytes) {
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1048576) return (bytes / 1024).toFixed(1) + " KB";
    return (bytes / 1048576).toFixed(1) + " MB";
  }

  function data() {
    var node = document.getElementById("jdx-data");
    return node ? JSON.parse(node.textContent) : null;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function api(method, url, body) {
    if (window.JDX && window.JDX.api) return window.JDX.api(method, url, body);
    var meta = document.querySelector('meta[name="csrf-token"]');
    var init = { method: method, headers: { "X-CSRF-Token": meta ? meta.content : "" },
                 credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(url, init).then(function (response) {
      return response.json().then(function (value) {
        if (!response.ok) throw new Error(value.error + (value.fix ? " — " + value.fix : ""));
        return value;
      });
    });
  }

  function on(kind, fn) { if (window.JDX && window.JDX.on) window.JDX.on(kind, fn); }

  function toast(text, kind) {
    if (window.JDX && window.JDX.toast) window.JDX.toast(text, kind);
    else window.alert(text);
  }

  window.JDXA = { h: h, time: time, duration: duration, size: size, data: data,
                  clear: clear, api: api, on: on, toast: toast };
})();
