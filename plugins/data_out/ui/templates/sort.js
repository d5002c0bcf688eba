// Click a column head to sort the table by it (numbers by value, text alphabetically); again to reverse.
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th.sortable").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.from(body.rows), asc = th.dataset.asc !== "1";
      var index = Array.from(th.parentNode.children).indexOf(th);
      var key = function (r) { var c = r.cells[index]; var v = c.dataset.sort !== undefined ? c.dataset.sort : c.textContent.trim();
        var n = parseFloat(v); return isNaN(n) ? v.toLowerCase() : n; };
      rows.sort(function (a, b) { var x = key(a), y = key(b); if (x === y) return 0;
        if (typeof x !== typeof y) return (typeof x === "number" ? -1 : 1) * (asc ? 1 : -1);
        return (x < y ? -1 : 1) * (asc ? 1 : -1); });
      rows.forEach(function (r) { body.appendChild(r); });
      th.dataset.asc = asc ? "1" : "0";
    });
  });
});
