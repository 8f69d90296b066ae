// pecgate status page: optional live refresh. The page works without this
// script; with it, the status page reloads its numbers in place every few
// seconds (main[data-refresh]) while nobody is typing, and the confirmation
// of a forced flip enables its button once the domain's name is typed.
(function () {
  "use strict";

  function refresher(main) {
    var every = parseInt(main.getAttribute("data-refresh"), 10) * 1000;
    var live = document.getElementById("live");
    var updated = document.getElementById("updated");
    var busy = false;
    if (!every || !live) return;
    live.hidden = false;

    function typing() {
      var a = document.activeElement;
      return a && (a.tagName === "INPUT" || a.tagName === "TEXTAREA" || a.tagName === "SELECT");
    }

    function tick() {
      if (busy || document.hidden || typing()) return;
      busy = true;
      var url = location.pathname + location.search;
      fetch(url, { credentials: "same-origin", cache: "no-store", headers: { "Accept": "text/html" } })
        .then(function (resp) {
          if (!resp.ok) throw new Error("HTTP " + resp.status);
          return resp.text();
        })
        .then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("status");
          if (!fresh) {
            // The session ended: the answer is the login form.
            live.textContent = "● Session ended: reload to log in";
            live.classList.add("stale");
            clearInterval(timer);
            return;
          }
          main.innerHTML = fresh.innerHTML;
          var u = doc.getElementById("updated");
          if (u && updated) updated.textContent = u.textContent;
          live.textContent = "● Live";
          live.classList.remove("stale");
        })
        .catch(function () {
          live.textContent = "● Offline";
          live.classList.add("stale");
        })
        .then(function () { busy = false; });
    }
    var timer = setInterval(tick, every);
  }

  function confirmGuard(input) {
    var button = document.getElementById("confirm-button");
    if (!button) return;
    var want = (input.getAttribute("data-expect") || "").toLowerCase();
    function check() { button.disabled = input.value.trim().toLowerCase() !== want; }
    input.addEventListener("input", check);
    check();
  }

  document.addEventListener("DOMContentLoaded", function () {
    // The note of a change made here shows once, not on every refresh.
    if (/[?&]changed=/.test(location.search) && history.replaceState) {
      history.replaceState(null, "", location.pathname + location.hash);
    }
    var main = document.getElementById("status");
    if (main) refresher(main);
    var confirm = document.getElementById("confirm");
    if (confirm) confirmGuard(confirm);
  });
})();
