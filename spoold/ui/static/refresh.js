// spoold status page: reload every N seconds when the page asks for it (?refresh=N puts
// data-refresh on <body>), only while the tab is visible. Nothing else; the page works without it.
"use strict";
(function () {
  var seconds = Number(document.body.getAttribute("data-refresh"));
  if (!(seconds >= 1)) {
    return;
  }
  function tick() {
    if (document.visibilityState === "visible") {
      window.location.reload();
    } else {
      document.addEventListener("visibilitychange", tick, { once: true });
    }
  }
  window.setTimeout(tick, seconds * 1000);
})();
