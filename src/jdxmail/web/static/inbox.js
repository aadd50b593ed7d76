// jdxmail console: the inbox list and the message page (uses JDX from console.js).
"use strict";
(function () {
  // an API error as a toast: the server's error text, and its fix when it gave one
  function failed(error) {
    JDX.toast(error.message + (error.fix ? " (" + error.fix + ")" : ""), "error");
  }

  function humanSize(bytes) {
    const n = Number(bytes);
    if (n < 1024) { return n + " B"; }
    if (n < 1024 * 1024) { return (n / 1024).toFixed(n < 10240 ? 1 : 0) + " KB"; }
    return (n / 1048576).toFixed(1) + " MB";
  }

  function localTime(iso) {
    const date = new Date(iso);
    if (isNaN(date.getTime())) { return iso; }
    const now = new Date();
    const sameDay = date.toDateString() === now.toDateString();
    const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    return sameDay ? time : date.toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" }) + " " + time;
  }

  function prettify(root) {
    root.querySelectorAll("[data-bytes]").forEach(function (el) { el.textContent = humanSize(el.dataset.bytes); });
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      const iso = el.getAttribute("datetime");
      el.textContent = el.classList.contains("full") ? new Date(iso).toLocaleString() : localTime(iso);
      el.title = el.getAttribute("datetime");
    });
  }

  function cell(className, text, title) {
    const td = document.createElement("td");
    td.className = className;
    td.textContent = text;
    if (title) { td.title = title; }
    return td;
  }

  function messageRow(m) {
    const tr = document.createElement("tr");
    tr.dataset.id = m.id;
    tr.className = "fresh";
    const sel = document.createElement("td");
    sel.className = "sel";
    const box = document.createElement("input");
    box.type = "checkbox"; box.className = "pick"; box.value = m.id;
    box.setAttribute("aria-label", "Select message");
    sel.appendChild(box);
    tr.appendChild(sel);
    tr.appendChild(cell("from", m.from || (m.envelope && m.envelope.mail_from) || "(no sender)", m.from));
    tr.appendChild(cell("to", (m.to || []).join(", ") || m.mailbox, (m.to || []).join(", ")));
    const subject = document.createElement("td");
    subject.className = "subject";
    const link = document.createElement("a");
    link.href = "/inbox/" + encodeURIComponent(m.id);
    link.textContent = m.subject || "(no subject)";
    subject.appendChild(link);
    if (m.attachments) {
      const clip = document.createElement("span");
      clip.className = "clip";
      clip.textContent = String(m.attachments);
      clip.title = m.attachments + (m.attachments === 1 ? " attachment" : " attachments");
      subject.appendChild(document.createTextNode(" "));
      subject.appendChild(clip);
    }
    tr.appendChild(subject);
    tr.appendChild(cell("size", humanSize(m.size)));
    const when = document.createElement("td");
    when.className = "when";
    const time = document.createElement("time");
    time.setAttribute("datetime", m.created);
    time.textContent = localTime(m.created);
    time.title = m.created;
    when.appendChild(time);
    tr.appendChild(when);
    return tr;
  }

  function selectedIds() {
    return Array.from(document.querySelectorAll("input.pick:checked")).map(function (b) { return b.value; });
  }

  function updateSelection() {
    const button = document.getElementById("delete-selected");
    const count = selectedIds().length;
    if (button) {
      button.disabled = count === 0;
      button.textContent = count ? "Delete selected (" + count + ")" : "Delete selected";
    }
  }

  function setTotal(total) {
    const el = document.getElementById("inbox-total");
    if (!el) { return; }
    el.dataset.total = String(total);
    el.textContent = total + (total === 1 ? " message" : " messages");
    const range = document.getElementById("page-range");
    const rows = document.querySelectorAll("#messages tbody tr[data-id]").length;
    if (range) {
      const start = Number(range.dataset.start || "0");
      range.textContent = rows ? (start + 1) + "\u2013" + (start + rows) + " of " + total : "";
    }
  }

  function initList() {
    const table = document.getElementById("messages");
    if (!table) { return; }
    const body = table.querySelector("tbody");
    table.addEventListener("change", function (event) {
      if (event.target.classList.contains("pick")) { updateSelection(); }
    });
    const all = document.getElementById("select-all");
    if (all) {
      all.addEventListener("change", function () {
        document.querySelectorAll("input.pick").forEach(function (b) { b.checked = all.checked; });
        updateSelection();
      });
    }
    const delSelected = document.getElementById("delete-selected");
    if (delSelected) {
      delSelected.addEventListener("click", async function () {
        const ids = selectedIds();
        if (!ids.length) { return; }
        try {
          const result = await JDX.api("DELETE", "/api/v1/messages", { ids: ids });
          JDX.toast("Deleted " + result.deleted + " message" + (result.deleted === 1 ? "" : "s"), "ok");
          window.location.reload();
        } catch (error) { failed(error); }
      });
    }
    const delAll = document.getElementById("delete-all");
    if (delAll) {
      delAll.addEventListener("click", async function () {
        if (!window.confirm("Delete every message of every mailbox?")) { return; }
        try {
          const result = await JDX.api("DELETE", "/api/v1/messages");
          JDX.toast("Deleted " + result.deleted + " messages", "ok");
          window.location.href = "/inbox";
        } catch (error) { failed(error); }
      });
    }
    const live = table.dataset.liveInsert === "1";
    const pageSize = Number(table.dataset.pageSize) || 50;
    JDX.on("message", function (m) {
      const totalEl = document.getElementById("inbox-total");
      if (!live) {
        const note = document.getElementById("new-mail");
        if (note) { note.hidden = false; }
        return;
      }
      if (body.querySelector('tr[data-id="' + CSS.escape(m.id) + '"]')) { return; }
      body.insertBefore(messageRow(m), body.firstChild);
      while (body.rows.length > pageSize) { body.deleteRow(body.rows.length - 1); }
      const empty = document.getElementById("empty");
      if (empty) { empty.remove(); }
      if (totalEl) { setTotal(Number(totalEl.dataset.total || "0") + 1); }
      const delAllButton = document.getElementById("delete-all");
      if (delAllButton) { delAllButton.disabled = false; }
    });
    JDX.on("removed", function (data) {
      let gone = 0;
      (data.ids || []).forEach(function (id) {
        const row = body.querySelector('tr[data-id="' + CSS.escape(id) + '"]');
        if (row) { row.remove(); gone += 1; }
      });
      if (gone && !body.querySelector("tr[data-id]")) {
        // the page emptied: show what the server has now (older mail, or "No mail yet")
        window.location.reload();
        return;
      }
      const totalEl = document.getElementById("inbox-total");
      // the whole list: its total drops by every removal; a search or a later page only
      // loses the rows it shows (its total is that of the search)
      const drop = live ? (data.ids || []).length : gone;
      if (totalEl && drop) { setTotal(Math.max(0, Number(totalEl.dataset.total || "0") - drop)); }
      if (gone) { updateSelection(); }
    });
  }

  function initChaos() {
    const form = document.getElementById("chaos-form");
    if (!form) { return; }
    const stages = ["MAIL", "RCPT", "DATA", "AUTH"];
    function show(state) {
      const badge = document.getElementById("chaos-state");
      badge.textContent = state.active ? "ON" : "off";
      badge.className = "badge " + (state.active ? "on" : "off");
      stages.forEach(function (stage) {
        const rule = state.rules[stage];
        form.elements["p-" + stage].value = rule ? rule.probability : 0;
        if (rule) { form.elements["code-" + stage].value = String(rule.code); }
      });
    }
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      const rules = {};
      stages.forEach(function (stage) {
        const p = Number(form.elements["p-" + stage].value || "0");
        rules[stage] = p > 0 ? { code: Number(form.elements["code-" + stage].value), probability: p } : null;
      });
      try {
        const state = await JDX.api("PUT", "/api/v1/chaos", { rules: rules });
        show(state);
        JDX.toast(state.active ? "Chaos is on" : "Chaos is off", state.active ? "info" : "ok");
      } catch (error) { failed(error); }
    });
    document.getElementById("chaos-off").addEventListener("click", async function () {
      try {
        show(await JDX.api("PUT", "/api/v1/chaos", { rules: {} }));
        JDX.toast("Chaos is off", "ok");
      } catch (error) { failed(error); }
    });
  }

  function initMessage() {
    const root = document.getElementById("message");
    if (!root) { return; }
    const id = root.dataset.id;
    const tabs = document.querySelectorAll("[role=tab][data-tab]");
    function select(name) {
      tabs.forEach(function (tab) { tab.setAttribute("aria-selected", String(tab.dataset.tab === name)); });
      document.querySelectorAll(".tab[data-panel]").forEach(function (panel) { panel.hidden = panel.dataset.panel !== name; });
      if (window.location.hash !== "#" + name) { history.replaceState(null, "", "#" + name); }
    }
    tabs.forEach(function (tab) { tab.addEventListener("click", function () { select(tab.dataset.tab); }); });
    const start = window.location.hash.slice(1);
    if (start && document.querySelector('.tab[data-panel="' + CSS.escape(start) + '"]')) { select(start); }
    const remote = document.getElementById("load-remote");
    if (remote) {
      remote.addEventListener("click", function () {
        const frame = document.getElementById("html-frame");
        frame.src = frame.dataset.remoteSrc;
        remote.disabled = true;
        document.getElementById("remote-note").textContent = "Remote content loaded for this message; scripts still never run.";
      });
    }
    document.getElementById("delete-message").addEventListener("click", async function () {
      try {
        await JDX.api("DELETE", "/api/v1/messages/" + encodeURIComponent(id));
        window.location.href = "/inbox";
      } catch (error) { failed(error); }
    });
    const release = document.getElementById("release-form");
    if (release) {
      release.addEventListener("submit", async function (event) {
        event.preventDefault();
        const body = { to: release.elements.to.value };
        if (release.elements.from.value.trim()) { body.from = release.elements.from.value.trim(); }
        try {
          const result = await JDX.api("POST", "/api/v1/messages/" + encodeURIComponent(id) + "/release", body);
          JDX.toast("Queued as " + result.queued + " for " + result.to.join(", "), "ok");
          release.reset();
        } catch (error) { failed(error); }
      });
    }
  }

  function init() {
    prettify(document);
    initList();
    initChaos();
    initMessage();
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
