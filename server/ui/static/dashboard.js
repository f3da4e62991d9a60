// Optional auto-refresh: off unless the person turns it on (remembered in this browser).
(function () {
  "use strict";
  var KEY = "lt-auto-refresh";
  var PERIOD_MS = 60000;
  var box = document.getElementById("auto-refresh");
  if (!box) { return; }
  box.parentElement.hidden = false;  // without JavaScript the toggle would do nothing
  var on = false;
  try { on = window.localStorage.getItem(KEY) === "on"; } catch (e) { on = false; }
  box.checked = on;
  var timer = null;
  function schedule() {
    if (timer !== null) { window.clearTimeout(timer); timer = null; }
    if (box.checked) { timer = window.setTimeout(function () { window.location.reload(); }, PERIOD_MS); }
  }
  box.addEventListener("change", function () {
    try { window.localStorage.setItem(KEY, box.checked ? "on" : "off"); } catch (e) { /* private mode */ }
    schedule();
  });
  schedule();
})();
