// The live editor of `colorize-batch review`: a click on a colour result opens the photo; in the
// editor a click adds a hint point (the picker's colour), a point can be dragged, selected and
// recoloured (the picker, or one of the model's suggested colours for that point) and removed.
// Every change re-colorizes the photo on the server (the model stays loaded there); "accept"
// writes the photo's hint file and its output. Photos are named by their manifest key
// (data.images[i].key, from the JSON block), never by a path.
(function () {
  var block = document.getElementById("hint-data");
  var data = block ? JSON.parse(block.textContent) : null;
  if (!data || !data.live) return;
  var editor = document.getElementById("editor"), area = document.getElementById("editor-area");
  var img = document.getElementById("editor-image"), nameBox = document.getElementById("editor-name");
  var picker = document.getElementById("editor-color"), radiusInput = document.getElementById("editor-radius");
  var swatches = document.getElementById("editor-suggestions"), status = document.getElementById("editor-status");
  var removeButton = document.getElementById("editor-remove");
  var state = null;  // the photo being edited: {image, card, points, selected, aspect}
  var seq = 0, suggestSeq = 0, renders = 0, drag = null;

  function post(path, body) {
    return fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
                         credentials: "same-origin" }).then(function (r) {
      if (r.ok) return r;
      return r.json().then(function (e) { throw new Error(e.error || r.statusText); },
                           function () { throw new Error(r.status + " " + r.statusText); });
    });
  }
  function fail(e) { status.textContent = "error: " + e.message; }
  function round(v) { return Math.round(Math.min(1, Math.max(0, v)) * 1e5) / 1e5; }
  function radius() {
    var r = Number(radiusInput.value);
    return r >= 0.0005 && r <= 0.5 ? r : data.default_radius;
  }
  function position(e) {
    var box = img.getBoundingClientRect();
    return { x: round((e.clientX - box.left) / box.width), y: round((e.clientY - box.top) / box.height) };
  }
  function others(skip) { return state.points.filter(function (_, i) { return i !== skip; }); }

  function drawDots() {
    area.querySelectorAll(".hint-dot").forEach(function (dot) { dot.remove(); });
    state.points.forEach(function (p, i) {
      var dot = document.createElement("span");
      dot.className = "hint-dot" + (i === state.selected ? " selected" : "");
      dot.setAttribute("data-point", String(i));
      dot.title = p.color + " at " + p.x.toFixed(3) + ", " + p.y.toFixed(3) + " (drag to move)";
      dot.style.left = p.x * 100 + "%";
      dot.style.top = p.y * 100 + "%";
      dot.style.width = 2 * p.radius * Math.min(1, 1 / state.aspect) * 100 + "%";  // radius: share of the shorter side
      dot.style.background = p.color;
      area.appendChild(dot);
    });
    removeButton.disabled = state.selected < 0;
  }

  function recolor() {
    var mine = ++seq, started = performance.now(), image = state.image;
    status.textContent = "re-colorizing…";
    post("api/recolor", { key: image.key, points: state.points }).then(function (r) { return r.blob(); }).then(function (blob) {
      if (mine !== seq) return;  // a newer edit is on its way
      var previous = img.src;
      img.onload = function () {
        if (previous.indexOf("blob:") === 0) URL.revokeObjectURL(previous);
        var ms = Math.round(performance.now() - started);
        renders += 1;
        editor.setAttribute("data-renders", String(renders));
        editor.setAttribute("data-round-trip-ms", String(ms));
        status.textContent = "re-colorized in " + ms + " ms";
      };
      img.src = URL.createObjectURL(blob);
    }).catch(fail);
  }

  function suggest(index) {
    var p = state.points[index], mine = ++suggestSeq;
    swatches.textContent = "";
    post("api/suggest", { key: state.image.key, points: others(index), x: p.x, y: p.y })
      .then(function (r) { return r.json(); }).then(function (d) {
        if (mine !== suggestSeq) return;
        d.colors.forEach(function (c) {
          var b = document.createElement("button");
          b.type = "button";
          b.className = "swatch";
          b.style.background = c.color;
          b.title = c.color + " (" + Math.round(c.share * 100) + "% likely)";
          b.setAttribute("data-color", c.color);
          b.setAttribute("aria-label", "suggested colour " + c.color);
          swatches.appendChild(b);
        });
      }).catch(fail);
  }

  function select(index) {
    state.selected = index;
    if (index >= 0) picker.value = state.points[index].color;
    else swatches.textContent = "";
    drawDots();
    if (index >= 0) suggest(index);
  }
  function recolour(color) {
    if (!state || state.selected < 0) return;
    state.points[state.selected].color = color.toLowerCase();
    picker.value = color;
    drawDots();
    recolor();
  }
  function removeSelected() {
    if (!state || state.selected < 0) return;
    state.points.splice(state.selected, 1);
    select(-1);
    recolor();
  }

  function open(index, card) {
    var image = data.images[index], thumb = card.querySelector(".hint-area img");
    var existing = image.existing || { points: [] };
    state = { image: image, card: card, selected: -1,
              points: existing.points.map(function (p) { return { x: p.x, y: p.y, color: p.color, radius: p.radius }; }),
              aspect: (Number(thumb.getAttribute("width")) || 1) / (Number(thumb.getAttribute("height")) || 1) };
    nameBox.textContent = card.querySelector(".path").textContent;
    swatches.textContent = "";
    img.onload = null;
    img.style.aspectRatio = String(state.aspect);
    img.src = thumb.src;  // until the editor's own image arrives
    editor.hidden = false;
    drawDots();
    recolor();
  }
  function close() {
    editor.hidden = true;
    state = null;
    seq++;
  }
  function accept() {
    var edited = state;
    status.textContent = "accepting…";
    post("api/accept", { key: edited.image.key, points: edited.points }).then(function (r) { return r.json(); }).then(function (d) {
      edited.image.existing = d.existing;
      status.textContent = "accepted: " + d.points + " point(s) in " + d.hints + ", output " + d.output;
      editor.setAttribute("data-accepted", String(Number(editor.getAttribute("data-accepted") || 0) + 1));
      var thumb = edited.card.querySelector(".hint-area img");
      thumb.src = thumb.src.split("?")[0] + "?v=" + Date.now();  // the new output's thumbnail
    }).catch(fail);
  }

  document.addEventListener("click", function (e) {
    var cardArea = e.target.closest(".hint-area"), swatch = e.target.closest(".swatch");
    if (cardArea) open(Number(cardArea.getAttribute("data-hint")), cardArea.closest(".card"));
    else if (swatch) recolour(swatch.getAttribute("data-color"));
    else if (e.target.id === "editor-close") close();
    else if (e.target.id === "editor-remove") removeSelected();
    else if (e.target.id === "editor-accept" && state) accept();
  });
  document.addEventListener("keydown", function (e) {
    if (!state || e.target.tagName === "INPUT") return;
    if (e.key === "Escape") close();
    else if (e.key === "Delete" || e.key === "Backspace") removeSelected();
  });
  picker.addEventListener("change", function () { recolour(picker.value); });

  area.addEventListener("pointerdown", function (e) {
    if (!state || e.button !== 0) return;
    e.preventDefault();
    var dot = e.target.closest(".hint-dot");
    if (dot) {
      drag = { index: Number(dot.getAttribute("data-point")), x: e.clientX, y: e.clientY, moved: false };
      area.setPointerCapture(e.pointerId);
      return;
    }
    var at = position(e);
    state.points.push({ x: at.x, y: at.y, color: picker.value.toLowerCase(), radius: radius() });
    select(state.points.length - 1);
    recolor();
  });
  area.addEventListener("pointermove", function (e) {
    if (!drag) return;
    if (Math.abs(e.clientX - drag.x) + Math.abs(e.clientY - drag.y) > 3) drag.moved = true;
    if (!drag.moved) return;
    var at = position(e), p = state.points[drag.index];
    p.x = at.x;
    p.y = at.y;
    drawDots();
  });
  area.addEventListener("pointerup", function () {
    if (!drag) return;
    var done = drag;
    drag = null;
    select(done.index);
    if (done.moved) recolor();
  });
})();
