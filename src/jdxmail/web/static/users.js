// The Users page (webconfig): add, re-password and remove SMTP users through
// /api/v1/users, then redraw the table from the answer. Uses JDX.api / JDX.toast.
"use strict";
(function () {
  const form = document.getElementById("user-form");
  if (!form) return;
  const body = document.getElementById("users-body");
  const errorBox = document.getElementById("user-error");
  const title = document.getElementById("add-title");
  const submit = document.getElementById("user-submit");
  const cancel = document.getElementById("user-cancel");
  const nameInput = document.getElementById("user-name");

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
  }

  function senders(list) {
    if (list === null) return "any";
    return list.length ? list.join(", ") : "only itself";
  }

  function button(text, cls) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.className = cls;
    return b;
  }

  function render(users) {
    body.replaceChildren();
    if (!users.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = document.createElement("td");
      td.colSpan = 4;
      td.textContent = "No users yet.";
      tr.append(td);
      body.append(tr);
      return;
    }
    for (const user of users) {
      const tr = document.createElement("tr");
      tr.dataset.user = user.user_name;
      const name = document.createElement("td");
      name.className = "name";
      name.textContent = user.user_name;
      if (!user.active) {
        const badge = document.createElement("span");
        badge.className = "badge warn";
        badge.textContent = "not applied";
        name.append(" ", badge);
      }
      const type = document.createElement("td");
      type.textContent = user.hash_type;
      const allowed = document.createElement("td");
      allowed.textContent = senders(user.allowed_senders);
      const actions = document.createElement("td");
      actions.className = "actions";
      actions.append(button("Change password", "js-passwd"), " ", button("Remove", "js-remove danger"));
      tr.append(name, type, allowed, actions);
      body.append(tr);
    }
  }

  function setMode(mode, name) {
    form.elements.mode.value = mode;
    showError("");
    if (mode === "passwd") {
      title.textContent = "New password for " + name;
      nameInput.value = name;
      nameInput.readOnly = true;
      submit.textContent = "Set password";
      cancel.hidden = false;
      form.scrollIntoView({ block: "center" });
      form.elements.password.focus();
    } else {
      title.textContent = "Add a user";
      nameInput.readOnly = false;
      form.reset();
      submit.textContent = "Add user";
      cancel.hidden = true;
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    if (data.get("password") !== data.get("password2")) {
      showError("The two passwords differ.");
      return;
    }
    const name = String(data.get("user_name")).trim();
    const payload = { password: data.get("password"), hash_type: data.get("hash_type") };
    submit.disabled = true;
    try {
      let answer;
      if (data.get("mode") === "passwd") {
        answer = await JDX.api("PUT", "/api/v1/users/" + encodeURIComponent(name) + "/password", payload);
        JDX.toast("Password of " + name + " changed", "ok");
      } else {
        payload.user_name = name;
        answer = await JDX.api("POST", "/api/v1/users", payload);
        JDX.toast("Added " + name, "ok");
      }
      render(answer.users);
      setMode("add");
      if (answer.note) JDX.toast(answer.note, "warn");
    } catch (error) {
      showError(error.message);
    } finally {
      submit.disabled = false;
    }
  });

  cancel.addEventListener("click", () => setMode("add"));

  body.addEventListener("click", async (event) => {
    const target = event.target;
    if (!(target instanceof HTMLButtonElement)) return;
    const row = target.closest("tr");
    const name = row && row.dataset.user;
    if (!name) return;
    if (target.classList.contains("js-passwd")) {
      setMode("passwd", name);
      return;
    }
    if (target.classList.contains("js-remove")) {
      if (!window.confirm("Remove the user " + name + "?")) return;
      try {
        const answer = await JDX.api("DELETE", "/api/v1/users/" + encodeURIComponent(name));
        render(answer.users);
        JDX.toast("Removed " + name, "ok");
      } catch (error) {
        showError(error.message);
      }
    }
  });
})();
