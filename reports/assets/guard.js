window.__reportErrors = [];
window.addEventListener("error", function (e) {
  window.__reportErrors.push(String((e && e.message) || e));
  var box = document.getElementById("js-errors");
  if (box) { box.hidden = false; box.textContent += String((e && e.message) || e) + "\n"; }
});
