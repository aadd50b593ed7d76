// The Settings page (webconfig): sends the changed fields to PUT /api/v1/settings,
// the raw editor to PUT /api/v1/settings/raw, and shows the findings next to the
// fields they name (key, line, fix). Uses JDX.api / JDX.toast.
"use strict";
(function () {
  const root = document.getElementById("settings-root");
  if (!root) return;
  const form = document.getElementById("settings-form");
  const saveBox = document.getElementById("save-box");
  const findingsBox = document.getElementById("findings-box");
  const restartBox = document.getElementById("restart-box");
  const restartKeys = document.getElementById("restart-keys");
  const raw = document.getElementById("raw-text");
  const rawFindings = document.getElementById("raw-findings");
  const dirty = document.getElementById("settings-dirty");

  function typed(input) {
    const kind = input.dataset.kind;
    if (kind === "bool") return input.checked;
    const text = input.value.trim();
    if (kind === "list") return text ? text.split(/\n/).map((s) => s.trim()).filter(Boolean) : null;
    if (kind === "int") return text === "" ? null : Number(text);
    if (kind === "secret") return text;
    return text === "" ? null : text;
  }

  function changed(input) {
    if (input.dataset.kind === "bool") return String(input.checked) !== input.dataset.initial;
    if (input.dataset.kind === "secret") return input.value !== "";
    return input.value.trim() !== (input.dataset.initial || "").trim();
  }

  function changes() {
    const values = {};
    for (const input of form.querySelectorAll("[data-kind]")) {
      if (changed(input)) values[input.name] = typed(input);
    }
    return values;
  }

  function findingItem(f) {
    const li = document.createElement("li");
    li.className = "finding " + f.severity;
    const sev = document.createElement("span");
    sev.className = "sev";
    sev.textContent = f.severity;
    li.append(sev, " ");
    if (f.key) {
      const code = document.createElement("code");
      code.textContent = f.key;
      li.append(code, " ");
    }
    if (f.line) {
      const line = document.createElement("span");
      line.className = "line";
      line.textContent = "line " + f.line;
      li.append(line);
    }
    li.append(": " + f.message);
    if (f.fix) {
      const fix = document.createElement("div");
      fix.className = "fix";
      fix.textContent = f.fix;
      li.append(fix);
    }
    return li;
  }

  function fieldFor(key) {
    if (!key) return null;
    for (const field of form.querySelectorAll(".field[data-key]")) {
      const name = field.dataset.key;
      // a key may carry the "Jdx." prefix of the JumboDogX layout
      if (key === name || key.endsWith("." + name)) return field;
    }
    return null;
  }

  function clearFindings() {
    for (const list of form.querySelectorAll(".field-findings")) list.replaceChildren();
    for (const field of form.querySelectorAll(".field.has-error")) field.classList.remove("has-error");
    findingsBox.replaceChildren();
    findingsBox.hidden = true;
  }

  function showFindings(findings) {
    clearFindings();
    let first = null;
    for (const f of findings || []) {
      const field = fieldFor(f.key);
      if (field) {
        field.querySelector(".field-findings").append(findingItem(f));
        if (f.severity === "error") field.classList.add("has-error");
        first = first || field;
      }
      findingsBox.append(findingItem(f));
    }
    findingsBox.hidden = !findingsBox.children.length;
    return first;
  }

  function showSaved(answer) {
    saveBox.hidden = false;
    saveBox.className = "notice ok";
    let text = answer.changed.length ? "Saved: " + answer.changed.join(", ") + "." : "Saved (no value changed).";
    text += answer.applied ? " Applied to the running server." : " Not applied: the server could not reload it (see the log).";
    saveBox.textContent = text;
    if (answer.restart_pending && answer.restart_pending.length) {
      restartKeys.textContent = answer.restart_pending.join(", ");
      restartBox.hidden = false;
    }
    root.dataset.version = answer.version;
  }

  function showRefused(error) {
    saveBox.hidden = false;
    saveBox.className = "notice error";
    const errors = (error.findings || []).filter((f) => f.severity === "error").length;
    saveBox.textContent = errors
      ? "Not saved: " + errors + (errors > 1 ? " errors" : " error") + " below; nothing was written. Fix and save again."
      : "Not saved: " + error.message + (error.fix ? " — " + error.fix : "");
  }

  async function call(method, url, body) {
    // like JDX.api, but keeps the findings of a refused save
    const token = document.querySelector('meta[name="csrf-token"]');
    const response = await fetch(url, {
      method,
      headers: { "Content-Type": "application/json", "X-CSRF-Token": token ? token.content : "" },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    const data = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) {
      const error = new Error(data.error || response.statusText);
      error.fix = data.fix;
      error.findings = data.findings;
      throw error;
    }
    return data;
  }

  form.addEventListener("input", () => {
    const count = Object.keys(changes()).length;
    dirty.textContent = count ? count + " unsaved change" + (count > 1 ? "s" : "") : "";
  });

  form.addEventListener("reset", () => {
    dirty.textContent = "";
    clearFindings();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = changes();
    if (!Object.keys(values).length) {
      JDX.toast("Nothing changed", "info");
      return;
    }
    const button = document.getElementById("settings-save");
    button.disabled = true;
    try {
      const answer = await call("PUT", "/api/v1/settings", { values, version: root.dataset.version });
      showFindings(answer.findings);
      showSaved(answer);
      // what was saved is the new starting point (also for "Undo changes")
      for (const input of form.querySelectorAll("[data-kind]")) {
        if (input.dataset.kind === "bool") {
          input.dataset.initial = String(input.checked);
          input.defaultChecked = input.checked;
        } else if (input.dataset.kind === "secret") {
          input.value = "";
        } else if (input.tagName === "SELECT") {
          input.dataset.initial = input.value;
          for (const option of input.options) option.defaultSelected = option.selected;
        } else {
          input.dataset.initial = input.value;
          input.defaultValue = input.value;
        }
      }
      dirty.textContent = "";
      const reloaded = await fetch("/api/v1/settings/raw", { credentials: "same-origin" });
      if (reloaded.ok) raw.value = (await reloaded.json()).text;
      JDX.toast("Settings saved", "ok");
    } catch (error) {
      const first = showFindings(error.findings);
      showRefused(error);
      if (first) first.scrollIntoView({ block: "center" });
    } finally {
      button.disabled = false;
    }
  });

  function showRaw(findings) {
    rawFindings.replaceChildren(...(findings || []).map(findingItem));
    rawFindings.hidden = !rawFindings.children.length;
  }

  document.getElementById("raw-check").addEventListener("click", async () => {
    try {
      const answer = await call("POST", "/api/v1/settings/check", { text: raw.value });
      showRaw(answer.findings);
      JDX.toast(answer.valid ? "No errors" : "There are errors", answer.valid ? "ok" : "error");
    } catch (error) {
      showRaw(error.findings);
      JDX.toast(error.message, "error");
    }
  });

  document.getElementById("raw-save").addEventListener("click", async () => {
    try {
      const answer = await call("PUT", "/api/v1/settings/raw", { text: raw.value, version: root.dataset.version });
      showRaw(answer.findings);
      showSaved(answer);
      JDX.toast("File saved; reloading the page", "ok");
      window.setTimeout(() => window.location.reload(), 800);
    } catch (error) {
      showRaw(error.findings);
      showRefused(error);
    }
  });
})();
