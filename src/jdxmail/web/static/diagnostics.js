/* Diagnostics: run a check through the API and show its stages and findings. */
(function () {
  "use strict";
  var A = window.JDXA, h = A.h;
  var out = document.getElementById("result");

  function mark(ok) {
    if (ok === true) return h("span", { className: "mark good", text: "✓", title: "passed" });
    if (ok === false) return h("span", { className: "mark bad", text: "✗", title: "failed" });
    return h("span", { className: "mark muted", text: "–", title: "skipped / note" });
  }

  function stages(list) {
    return h("table", { className: "list stages" }, [
      h("thead", {}, [h("tr", {}, [h("th", { text: "" }), h("th", { text: "Stage" }), h("th", { text: "ms" }), h("th", { text: "What was seen" })])]),
      h("tbody", {}, list.map(function (s) {
        return h("tr", { className: s.ok === false ? "failed" : "" }, [
          h("td", {}, [mark(s.ok)]), h("td", { text: s.stage }),
          h("td", { className: "num", text: s.ms === null ? "" : String(s.ms) }),
          h("td", { className: "reply", text: s.detail })
        ]);
      }))
    ]);
  }

  function findings(list) {
    if (!list.length) return null;
    return h("ul", { className: "findings" }, list.map(function (f) {
      var sev = f.severity || "info";
      return h("li", { className: "finding " + sev }, [
        h("strong", { text: sev.toUpperCase() + " " }),
        h("span", { text: f.message }),
        f.row ? h("span", { className: "muted small", text: " [" + f.row + "]" }) : null,
        f.fix ? h("div", { className: "fix", text: f.fix }) : null
      ]);
    }));
  }

  function show(title, nodes) {
    document.getElementById("result-card").hidden = false;
    document.getElementById("result-title").textContent = title;
    A.clear(out);
    nodes.forEach(function (n) { if (n) out.appendChild(n); });
    document.getElementById("result-card").scrollIntoView({ block: "nearest" });
  }

  function verdict(ok, text) {
    return h("p", { className: "verdict " + (ok ? "good" : "bad") }, [mark(ok), h("span", { text: " " + text })]);
  }

  function run(form, url, body, title, render) {
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    show(title, [h("p", { className: "muted", text: "running…" })]);
    A.api("POST", url, body).then(function (result) { show(title, render(result)); })
      .catch(function (e) { show(title, [verdict(false, e.message)]); })
      .then(function () { button.disabled = false; });
  }

  var relayForm = document.getElementById("form-relay");
  relayForm.addEventListener("submit", function (event) {
    event.preventDefault();
    if (!relayForm.elements.relay) return;
    var body = { relay: relayForm.elements.relay.value || null,
                 mail_from: relayForm.elements.mail_from.value || null,
                 rcpt_to: relayForm.elements.rcpt_to.value || null,
                 send: relayForm.elements.send.checked };
    run(relayForm, "/api/v1/diagnostics/test-relay", body, "test-relay", function (r) {
      var nodes = [verdict(r.ok, r.ok ? "every stage passed" : "a stage failed")];
      r.relays.forEach(function (rep) {
        nodes.push(h("h3", { text: rep.relay + " — " + rep.host + ":" + rep.port + " (TLS " + rep.tls + ")" }));
        nodes.push(stages(rep.stages));
        nodes.push(findings(rep.findings));
      });
      return nodes;
    });
  });

  var portForm = document.getElementById("form-port");
  portForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var body = { port: portForm.elements.port.value ? Number(portForm.elements.port.value) : null,
                 bind: portForm.elements.bind.value || null,
                 listening: portForm.elements.listening.checked };
    run(portForm, "/api/v1/diagnostics/check-port", body, "check-port", function (r) {
      var nodes = [verdict(r.ok, r.address + ":" + r.port + " — " + r.status)];
      if (r.probes.length) nodes.push(stages(r.probes));
      nodes.push(findings(r.findings));
      return nodes;
    });
  });

  var doctorForm = document.getElementById("form-doctor");
  doctorForm.addEventListener("submit", function (event) {
    event.preventDefault();
    run(doctorForm, "/api/v1/diagnostics/doctor", {}, "doctor", function (r) {
      var nodes = [verdict(r.ok, r.ok ? "no problem found in " + r.config : "problems found in " + r.config)];
      nodes.push(h("table", { className: "list stages" }, [h("tbody", {}, r.rows.map(function (row) {
        return h("tr", { className: row.ok === false ? "failed" : "" }, [
          h("td", {}, [mark(row.ok)]), h("td", { className: "nowrap", text: row.id }),
          h("td", {}, [h("span", { text: row.summary }),
                       row.fix ? h("div", { className: "fix", text: row.fix }) : null])
        ]);
      }))]));
      r.relays.forEach(function (rep) {
        nodes.push(h("h3", { text: "relay " + rep.relay }));
        nodes.push(stages(rep.stages));
      });
      return nodes;
    });
  });
})();
