// Human times: every <time class="when" datetime="..."> (rendered by the |when filter with the relative
// time as of the page render and the UTC time in its title) shows "12 s ago", kept current, with the
// absolute time in the viewer's own time zone on hover.
(function () {
  "use strict";
  function relative(ms) {
    var future = ms < 0, s = Math.abs(ms) / 1000, text;
    if (s < 5) return "just now";
    var units = [[31536000, "year"], [2592000, "month"], [86400, "day"], [3600, "h"], [60, "min"], [1, "s"]];
    for (var i = 0; i < units.length; i++) {
      if (s >= units[i][0]) {
        var n = Math.floor(s / units[i][0]), unit = units[i][1];
        text = n + " " + unit + (unit.length > 3 && n !== 1 ? "s" : "");
        return future ? "in " + text : text + " ago";
      }
    }
    return "just now";
  }
  var format = new Intl.DateTimeFormat(undefined, {year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"});
  function refresh(root) {
    var now = Date.now();
    (root || document).querySelectorAll("time.when[datetime]").forEach(function (el) {
      var t = Date.parse(el.getAttribute("datetime"));
      if (isNaN(t)) return;
      el.textContent = relative(now - t);
      if (!el.dataset.local) { el.title = format.format(new Date(t)); el.dataset.local = "1"; }
    });
  }
  window.btardRelativeTime = relative;
  document.addEventListener("DOMContentLoaded", function () { refresh(); setInterval(refresh, 5000); });
  document.addEventListener("htmx:afterSettle", function () { refresh(); });
  document.addEventListener("htmx:oobAfterSwap", function () { refresh(); });
})();
