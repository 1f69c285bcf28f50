(function () {
  var KEY = "colorize-batch-gallery-view";
  function setView(view) {
    document.body.setAttribute("data-view", view);
    document.querySelectorAll("[data-set-view]").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-set-view") === view));
    });
    try { localStorage.setItem(KEY, view); } catch (e) { /* file:// storage may be off */ }
  }
  document.addEventListener("click", function (e) {
    var button = e.target.closest("[data-set-view]");
    if (button) setView(button.getAttribute("data-set-view"));
  });
  document.addEventListener("input", function (e) {
    if (e.target.classList.contains("split")) e.target.closest(".pair").style.setProperty("--split", e.target.value + "%");
  });
  document.addEventListener("keydown", function (e) {
    if (e.target.tagName === "INPUT") return;
    var rel = e.key === "ArrowRight" ? "next" : e.key === "ArrowLeft" ? "prev" : null;
    var link = rel && document.querySelector('a[rel="' + rel + '"]');
    if (link) location.href = link.href;
  });
  var saved = null;
  try { saved = localStorage.getItem(KEY); } catch (e) { /* ignore */ }
  setView(saved === "slider" ? "slider" : "side");
})();
