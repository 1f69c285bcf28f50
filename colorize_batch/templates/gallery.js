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

// The hint editor: a click on a colour result adds a point (x, y relative to the upright image,
// 0-1) of the picker's colour; a click on a point removes it. Edits are kept in localStorage
// (per gallery, across its pages) until they match the image's hint file again. When the gallery
// was built with suggested colours (image.suggest: a grid of cells, each "rrggbbPP" tokens, colour
// and share in percent), the card of the point just added offers its cell's colours as swatches.
(function () {
  var dataBlock = document.getElementById("hint-data");
  var data = dataBlock ? JSON.parse(dataBlock.textContent) : null;
  if (!data || data.live || !data.images.length) return;  // live: review.js edits instead
  var STORE = "colorize-batch-hints:" + data.store, COLOR = "colorize-batch-hint-color", RADIUS = "colorize-batch-hint-radius";
  var picker = document.getElementById("hint-color"), radiusInput = document.getElementById("hint-radius");
  var status = document.getElementById("hint-status");
  var edits = {};  // input relative path -> edited hint document
  var selected = null;  // { rel, index }: the point just added, whose suggested colours its card shows
  function storage(fn) { try { return fn(localStorage); } catch (e) { return null; } }  // file:// storage may be off
  edits = storage(function (s) { return JSON.parse(s.getItem(STORE) || "{}"); }) || {};
  var savedColor = storage(function (s) { return s.getItem(COLOR); });
  if (savedColor && /^#[0-9a-f]{6}$/i.test(savedColor)) picker.value = savedColor;
  var savedRadius = Number(storage(function (s) { return s.getItem(RADIUS); }));
  radiusInput.value = String(savedRadius > 0 && savedRadius <= 0.5 ? savedRadius : data.default_radius);

  function existing(image) { return image.existing || { points: [] }; }
  function documentOf(image) { return edits[image.rel] || existing(image); }
  function same(a, b) { return JSON.stringify(a) === JSON.stringify(b); }
  function save() { storage(function (s) { s.setItem(STORE, JSON.stringify(edits)); }); }
  function round(v) { return Math.round(Math.min(1, Math.max(0, v)) * 1e5) / 1e5; }
  function radius() {
    var r = Number(radiusInput.value);
    return r >= 0.0005 && r <= 0.5 ? r : data.default_radius;
  }
  function setPoints(image, points) {
    var doc = { points: points };
    if (existing(image).global) doc.global = existing(image).global;
    if (same(doc, existing(image))) delete edits[image.rel]; else edits[image.rel] = doc;
    save();
    render();
  }
  function suggestionsAt(image, p) {
    var grid = image.suggest;
    if (!grid) return [];
    var row = Math.min(grid.rows - 1, Math.floor(p.y * grid.rows)), col = Math.min(grid.cols - 1, Math.floor(p.x * grid.cols));
    return (grid.cells[row * grid.cols + col].match(/[0-9a-f]{8}/g) || []).map(function (token) {
      return { color: "#" + token.slice(0, 6), share: Number(token.slice(6)) };
    });
  }
  function selectedPoint(image) {
    return selected && selected.rel === image.rel ? documentOf(image).points[selected.index] || null : null;
  }
  function renderSwatches(bar, image) {
    var box = bar.querySelector(".hint-suggest"), point = selectedPoint(image);
    box.textContent = "";
    var colours = point ? suggestionsAt(image, point) : [];
    if (!colours.length) return;
    box.appendChild(document.createTextNode("suggested: "));
    colours.forEach(function (c) {
      var swatch = document.createElement("button");
      swatch.type = "button";
      swatch.className = "hint-swatch";
      swatch.setAttribute("data-color", c.color);
      swatch.setAttribute("aria-pressed", String(c.color === point.color));
      swatch.setAttribute("aria-label", "suggested colour " + c.color);
      swatch.title = c.color + " (" + c.share + " %)";
      swatch.style.background = c.color;
      box.appendChild(swatch);
    });
  }
  function render() {
    document.querySelectorAll(".hint-area").forEach(function (area) {
      var image = data.images[Number(area.getAttribute("data-hint"))];
      var img = area.querySelector("img");
      var w = Number(img.getAttribute("width")) || 1, h = Number(img.getAttribute("height")) || 1;
      area.querySelectorAll(".hint-dot").forEach(function (dot) { dot.remove(); });
      documentOf(image).points.forEach(function (p, i) {
        var dot = document.createElement("span");
        dot.className = "hint-dot" + (selectedPoint(image) === p ? " selected" : "");
        dot.setAttribute("data-point", String(i));
        dot.title = p.color + " at " + p.x.toFixed(3) + ", " + p.y.toFixed(3) + " (click to remove)";
        dot.style.left = p.x * 100 + "%";
        dot.style.top = p.y * 100 + "%";
        dot.style.width = 2 * p.radius * Math.min(w, h) / w * 100 + "%";  // radius: share of the shorter side
        dot.style.background = p.color;
        area.appendChild(dot);
      });
    });
    document.querySelectorAll(".hint-bar").forEach(function (bar) {
      var image = data.images[Number(bar.getAttribute("data-hint"))];
      var n = documentOf(image).points.length;
      bar.classList.toggle("edited", image.rel in edits);
      bar.querySelector(".hint-count").textContent = n + " hint point" + (n === 1 ? "" : "s") + (image.rel in edits ? " (edited)" : "");
      renderSwatches(bar, image);
    });
    var count = Object.keys(edits).length;
    status.textContent = count ? count + " edited image(s) in this gallery" : "no edits yet";
  }
  function download(name, obj) {
    var url = URL.createObjectURL(new Blob([JSON.stringify(obj, null, 1) + "\n"], { type: "application/json" }));
    var a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
  }

  document.addEventListener("click", function (e) {
    var dot = e.target.closest(".hint-dot"), area = e.target.closest(".hint-area");
    var bar = e.target.closest(".hint-bar"), button = e.target.closest("[data-hint-action]");
    var swatch = e.target.closest(".hint-swatch");
    if (area) {
      var image = data.images[Number(area.getAttribute("data-hint"))];
      var points = documentOf(image).points.slice();
      if (dot) {
        points.splice(Number(dot.getAttribute("data-point")), 1);
        selected = null;
      } else {
        var box = area.querySelector("img").getBoundingClientRect();
        points.push({ x: round((e.clientX - box.left) / box.width), y: round((e.clientY - box.top) / box.height),
                      color: picker.value.toLowerCase(), radius: radius() });
        selected = { rel: image.rel, index: points.length - 1 };
      }
      setPoints(image, points);
    } else if (bar && swatch) {  // a suggested colour for the point just added
      var chosen = data.images[Number(bar.getAttribute("data-hint"))], point = selectedPoint(chosen);
      if (!point) return;
      var recoloured = documentOf(chosen).points.slice();
      recoloured[selected.index] = Object.assign({}, point, { color: swatch.getAttribute("data-color") });
      setPoints(chosen, recoloured);
    } else if (bar && button) {
      var target = data.images[Number(bar.getAttribute("data-hint"))];
      var action = button.getAttribute("data-hint-action");
      if (action === "download") download(target.file, documentOf(target));
      else if (action === "undo") setPoints(target, documentOf(target).points.slice(0, -1));
      else if (action === "clear") setPoints(target, []);
    } else if (e.target.id === "hint-bundle") {
      var names = Object.keys(edits).sort();
      if (!names.length) { status.textContent = "nothing to download: no image has edited hints"; return; }
      var images = {};
      names.forEach(function (rel) { images[rel] = edits[rel]; });
      download("colorize-batch-hints.json", { format: data.format, version: data.version, images: images });
    } else if (e.target.id === "hint-forget") {
      edits = {};
      selected = null;
      save();
      render();
    }
  });
  data.images.forEach(function (image) {  // hint files imported since: those edits are done
    if (edits[image.rel] && same(edits[image.rel], existing(image))) delete edits[image.rel];
  });
  save();
  picker.addEventListener("change", function () { storage(function (s) { s.setItem(COLOR, picker.value); }); });
  radiusInput.addEventListener("change", function () { storage(function (s) { s.setItem(RADIUS, String(radius())); }); });
  render();
})();
