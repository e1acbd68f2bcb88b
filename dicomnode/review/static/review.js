// The rectangle tool of the review page: drag on a large frame to fill the region form's
// x0, y0, x1, y1 (frame pixels). Without JavaScript the numbers are typed; nothing else here.
"use strict";
(function () {
  var svg = document.getElementById("frame-overlay");
  var form = document.getElementById("region-form");
  if (!svg || !form) { return; }
  var ns = "http://www.w3.org/2000/svg";
  var columns = parseInt(svg.getAttribute("data-columns"), 10);
  var rows = parseInt(svg.getAttribute("data-rows"), 10);
  var start = null;
  var drawn = null;
  function point(event) {
    var box = svg.getBoundingClientRect();
    var x = Math.round((event.clientX - box.left) * columns / box.width);
    var y = Math.round((event.clientY - box.top) * rows / box.height);
    return { x: Math.max(0, Math.min(columns, x)), y: Math.max(0, Math.min(rows, y)) };
  }
  function show(a, b) {
    var x0 = Math.min(a.x, b.x), y0 = Math.min(a.y, b.y);
    var x1 = Math.max(a.x, b.x), y1 = Math.max(a.y, b.y);
    if (!drawn) {
      drawn = document.createElementNS(ns, "rect");
      drawn.setAttribute("class", "box-drawn");
      drawn.setAttribute("id", "drawn-box");
      svg.appendChild(drawn);
    }
    drawn.setAttribute("x", x0); drawn.setAttribute("y", y0);
    drawn.setAttribute("width", x1 - x0); drawn.setAttribute("height", y1 - y0);
    document.getElementById("region-x0").value = x0;
    document.getElementById("region-y0").value = y0;
    document.getElementById("region-x1").value = x1;
    document.getElementById("region-y1").value = y1;
  }
  svg.addEventListener("pointerdown", function (event) {
    start = point(event);
    svg.setPointerCapture(event.pointerId);
    event.preventDefault();
  });
  svg.addEventListener("pointermove", function (event) {
    if (start) { show(start, point(event)); }
  });
  svg.addEventListener("pointerup", function (event) {
    if (start) { show(start, point(event)); start = null; }
  });
})();
