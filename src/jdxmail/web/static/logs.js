/* The log viewer: the filtered lines, then new lines of today's file as they come. */
(function () {
  "use strict";
  var A = window.JDXA, h = A.h;
  var RANK = { DEBUG: 0, INFO: 1, WARNING: 2, ERROR: 3, CRITICAL: 4 };
  var current = A.data();
  var filter = current.filter;
  var body = document.querySelector("#log-lines tbody");
  var shown = 0;
  var MAX_SHOWN = 5000;

  function keeps(line) {
    if (filter.level) {
      var rank = RANK[line.level];
      if (rank === undefined || rank < RANK[filter.level.toUpperCase()]) return false;
    }
    if (filter.category && line.category.toLowerCase() !== filter.category.toLowerCase()) return false;
    if (filter.q) {
      var needle = filter.q.toLowerCase();
      return line.message.toLowerCase().indexOf(needle) >= 0
        || line.session.toLowerCase().indexOf(needle) >= 0;
    }
    return true;
  }

  function row(line) {
    return h("tr", { className: "lvl-" + (line.level || "none").toLowerCase() }, [
      h("td", { className: "nowrap", text: line.time }),
      h("td", {}, [line.level ? h("span", { className: "level", text: line.level }) : null]),
      h("td", { text: line.category }),
      h("td", {}, [line.session ? h("code", { text: line.session }) : null]),
      h("td", { className: "message", text: line.message })
    ]);
  }

  function info() {
    var day = current.day ? current.day.day + (current.day.current ? " (today)" : "") : "today (no file yet)";
    var text = shown + " line(s) of " + day;
    if (current.more) text += "; older matching lines left out (narrow the filter, or pick a day)";
    document.getElementById("log-info").textContent = text;
    document.getElementById("empty").hidden = shown > 0;
  }

  function atBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
  }

  current.lines.forEach(function (line) { body.appendChild(row(line)); shown += 1; });
  info();
  var followable = !current.day || current.day.current;
  var follow = document.getElementById("follow");
  if (!followable) { follow.checked = false; follow.disabled = true; }
  if (shown) window.scrollTo(0, document.body.scrollHeight);

  A.on("log", function (event) {
    if (!followable || !follow.checked) return;
    var stick = atBottom();
    var sameFile = event.file === current.file;
    event.lines.forEach(function (line) {
      if (sameFile && line.at < current.end) return;  // read with the page already
      if (!keeps(line)) return;
      body.appendChild(row(line));
      shown += 1;
      if (shown > MAX_SHOWN) { body.removeChild(body.firstChild); shown -= 1; }
    });
    info();
    if (stick) window.scrollTo(0, document.body.scrollHeight);
  });
  ["f-day", "f-level", "f-category"].forEach(function (id) {
    document.getElementById(id).addEventListener("change", function () {
      document.getElementById("log-filter").submit();
    });
  });
})();
