// The Backup page (webconfig): uploads the chosen file to POST /api/v1/config/restore
// and shows the findings of a refused restore, or the copy kept of the old file.
"use strict";
(function () {
  const form = document.getElementById("restore-form");
  if (!form) return;
  const result = document.getElementById("restore-result");
  const findings = document.getElementById("restore-findings");
  const backups = document.getElementById("backups-body");

  function item(f) {
    const li = document.createElement("li");
    li.className = "finding " + f.severity;
    const where = [f.key, f.line ? "line " + f.line : ""].filter(Boolean).join(", ");
    li.textContent = f.severity + (where ? " (" + where + ")" : "") + ": " + f.message;
    if (f.fix) {
      const fix = document.createElement("div");
      fix.className = "fix";
      fix.textContent = f.fix;
      li.append(fix);
    }
    return li;
  }

  function show(kind, text, list) {
    result.hidden = false;
    result.className = "notice " + kind;
    result.textContent = text;
    findings.replaceChildren(...(list || []).map(item));
    findings.hidden = !findings.children.length;
  }

  function renderBackups(list) {
    backups.replaceChildren();
    for (const b of list) {
      const tr = document.createElement("tr");
      for (const value of [b.name, b.size + " bytes", b.modified]) {
        const td = document.createElement("td");
        td.textContent = value;
        tr.append(td);
      }
      backups.append(tr);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = document.getElementById("restore-file").files[0];
    if (!file) return;
    const text = await file.text();
    const token = document.querySelector('meta[name="csrf-token"]');
    const response = await fetch("/api/v1/config/restore", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": token ? token.content : "" },
      body: JSON.stringify({ text }),
      credentials: "same-origin",
    });
    const data = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) {
      show("error", "Not restored: " + data.error + (data.fix ? " — " + data.fix : ""), data.findings);
      return;
    }
    let text2 = "Restored " + file.name + ".";
    if (data.backup) text2 += " The previous file was kept as " + data.backup + ".";
    if (data.restart.length) text2 += " Takes effect after serve restarts: " + data.restart.join(", ") + ".";
    show("ok", text2, data.findings);
    renderBackups(data.backups);
    JDX.toast("Config restored", "ok");
  });
})();
