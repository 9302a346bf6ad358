// Copy buttons: <button class="copy" data-copy-target="ID"> copies the text of element ID.
(function () {
  "use strict";
  function fallback(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }
  function done(button, label) {
    var before = button.dataset.label || button.textContent;
    button.dataset.label = before;
    button.textContent = label;
    setTimeout(function () { button.textContent = before; }, 2000);
  }
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button.copy[data-copy-target]");
    if (!button) return;
    var source = document.getElementById(button.dataset.copyTarget);
    if (!source) return;
    var text = source.innerText.replace(/\s+$/, "") + "\n";
    var write = navigator.clipboard && window.isSecureContext ? navigator.clipboard.writeText(text) : fallback(text);
    write.catch(function () { return fallback(text); })
      .then(function () { done(button, "Copied"); }, function () { done(button, "Select and copy by hand"); });
  });
})();
