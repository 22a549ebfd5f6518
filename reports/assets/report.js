(function () {
  "use strict";
  var doc = document;

  /* ---- hover tooltips: any element with data-tip ---- */
  var tip = doc.createElement("div");
  tip.id = "tip";
  tip.setAttribute("role", "tooltip");
  doc.body.appendChild(tip);
  var current = null;

  function place(x, y) {
    var w = tip.offsetWidth, h = tip.offsetHeight;
    var left = x + 14, top = y + 16;
    if (left + w > window.innerWidth - 8) { left = x - w - 14; }
    if (top + h > window.innerHeight - 8) { top = y - h - 12; }
    tip.style.left = Math.max(4, left) + "px";
    tip.style.top = Math.max(4, top) + "px";
  }
  function hide() { current = null; tip.style.display = "none"; }
  function show(el) {
    if (el === current) { return; }
    current = el;
    tip.textContent = el.getAttribute("data-tip");
    tip.style.display = "block";
  }
  doc.addEventListener("mouseover", function (e) {
    var el = e.target && e.target.closest ? e.target.closest("[data-tip]") : null;
    if (!el) { hide(); return; }
    show(el);
    place(e.clientX, e.clientY);
  });
  doc.addEventListener("mousemove", function (e) { if (current) { place(e.clientX, e.clientY); } });
  doc.addEventListener("scroll", hide, true);
  doc.addEventListener("focusin", function (e) {
    var el = e.target && e.target.closest ? e.target.closest("[data-tip]") : null;
    if (!el) { hide(); return; }
    show(el);
    var r = el.getBoundingClientRect();
    place(r.left, r.bottom);
  });

  /* ---- table sorting ---- */
  function cellKey(cell) {
    if (!cell) { return ""; }
    var v = cell.getAttribute("data-v");
    return v === null ? cell.textContent.trim() : v;
  }
  function isNum(s) { return s !== "" && !isNaN(Number(s)); }
  function sortBy(th) {
    var row = th.parentNode, table = th.closest("table");
    var idx = Array.prototype.indexOf.call(row.children, th);
    var asc = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(row.children, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellKey(a.cells[idx]), y = cellKey(b.cells[idx]);
      if (x === "" && y === "") { return 0; }
      if (x === "") { return 1; }
      if (y === "") { return -1; }
      var c = isNum(x) && isNum(y) ? Number(x) - Number(y) : x.localeCompare(y, undefined, {numeric: true});
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  /* ---- clicks: legend toggles, view switches, sortable headers ---- */
  doc.addEventListener("click", function (e) {
    var t = e.target;
    if (!t || !t.closest) { return; }
    var key = t.closest("[data-toggle]");
    if (key) {
      var id = key.getAttribute("data-toggle"), scope = key.closest(".fig") || doc;
      var off = !key.classList.contains("off");
      key.classList.toggle("off", off);
      key.setAttribute("aria-pressed", off ? "false" : "true");
      Array.prototype.forEach.call(scope.querySelectorAll("[data-s]"), function (el) {
        if (el.getAttribute("data-s") === id) { el.classList.toggle("off", off); }
      });
      return;
    }
    var view = t.closest("[data-view]");
    if (view) {
      var box = view.closest(".views"), name = view.getAttribute("data-view");
      Array.prototype.forEach.call(box.querySelectorAll("[data-view]"), function (b) {
        b.classList.toggle("active", b === view);
        b.setAttribute("aria-selected", b === view ? "true" : "false");
      });
      Array.prototype.forEach.call(box.querySelectorAll(".view"), function (p) {
        p.hidden = p.getAttribute("data-name") !== name;
      });
      return;
    }
    var th = t.closest("table.sortable > thead th");
    if (th) { sortBy(th); }
  });
  doc.addEventListener("keydown", function (e) {
    if (e.key !== "Enter" && e.key !== " ") { return; }
    var th = e.target && e.target.closest ? e.target.closest("table.sortable > thead th") : null;
    if (th) { e.preventDefault(); sortBy(th); }
  });

  /* ---- printing: expand collapsed details, restore afterwards ---- */
  var opened = [];
  window.addEventListener("beforeprint", function () {
    opened = Array.prototype.filter.call(doc.querySelectorAll("details:not([open])"), function (d) {
      d.open = true;
      return true;
    });
  });
  window.addEventListener("afterprint", function () {
    opened.forEach(function (d) { d.open = false; });
    opened = [];
  });

  /* ---- errors caught before this script ran ---- */
  var errs = window.__reportErrors || [];
  if (errs.length) {
    var box = doc.getElementById("js-errors");
    box.hidden = false;
    box.textContent = errs.join("\n");
  }
  doc.documentElement.setAttribute("data-ready", "1");
}());
