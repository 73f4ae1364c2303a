// VoxelHub Table: a selectable (and optionally sortable) table with a thumbnail strip.

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "vh-tablewrap";
  const strip = document.createElement("div");
  strip.className = "vh-thumbs";
  const table = document.createElement("table");
  table.className = "vh-table";
  root.append(strip, table);
  el.appendChild(root);

  function select(key) {
    model.set("selected", key);
    model.save_changes();
  }

  function drawThumbs() {
    const items = model.get("thumbnails");
    strip.style.display = items.length ? "" : "none";
    strip.replaceChildren(...items.map((it) => {
      const d = document.createElement("div");
      d.className = "vh-thumb" + (it.key === model.get("selected") ? " vh-selected" : "");
      d.dataset.key = it.key;
      d.title = it.label || it.key;
      if (it.src) { const img = document.createElement("img"); img.src = it.src; img.alt = it.label || ""; d.appendChild(img); }
      else { const ph = document.createElement("div"); ph.className = "vh-thumb-missing"; ph.textContent = "\u2014"; d.appendChild(ph); }
      const s = document.createElement("span"); s.textContent = it.label || ""; d.appendChild(s);
      d.addEventListener("click", () => select(it.key));
      return d;
    }));
  }

  function cell(col, row) {
    const td = document.createElement("td");
    const v = row[col.key];
    if (col.kind === "flags") {
      for (const f of v || []) {
        const b = document.createElement("span");
        b.className = "vh-flag"; b.textContent = f; b.title = row.reasons || "";
        td.appendChild(b);
      }
    } else if (col.kind === "number" && typeof v === "number") {
      td.textContent = Number.isInteger(v) ? String(v) : v.toPrecision(5);
      td.style.textAlign = "right";
    } else {
      td.textContent = v === null || v === undefined ? "" : String(v);
      td.title = td.textContent;
    }
    return td;
  }

  function drawTable() {
    const cols = model.get("columns"), rows = model.get("rows"), key = model.get("key");
    const sortBy = model.get("sort_by"), asc = model.get("ascending"), sortable = model.get("sortable");
    const head = document.createElement("tr");
    for (const col of cols) {
      const th = document.createElement("th");
      th.textContent = (col.label || col.key) + (sortable && sortBy === col.key ? (asc ? " \u25b2" : " \u25bc") : "");
      th.dataset.key = col.key;
      if (sortable) {
        th.addEventListener("click", () => {
          model.set("ascending", model.get("sort_by") === col.key ? !model.get("ascending") : true);
          model.set("sort_by", col.key);
          model.save_changes();
        });
      }
      head.appendChild(th);
    }
    const body = rows.map((row) => {
      const tr = document.createElement("tr");
      const k = String(row[key]);
      tr.className = "vh-row" + (k === model.get("selected") ? " vh-selected" : "");
      tr.dataset.key = k;
      for (const col of cols) tr.appendChild(cell(col, row));
      tr.addEventListener("click", () => select(k));
      return tr;
    });
    if (!rows.length) {
      const tr = document.createElement("tr"); const td = document.createElement("td");
      td.colSpan = Math.max(1, cols.length); td.textContent = model.get("empty_text"); tr.appendChild(td); body.push(tr);
    }
    const thead = document.createElement("thead"); thead.appendChild(head);
    const tbody = document.createElement("tbody"); tbody.append(...body);
    table.replaceChildren(thead, tbody);
  }

  function drawAll() { drawThumbs(); drawTable(); }
  const events = ["change:rows", "change:columns", "change:selected", "change:sort_by", "change:ascending", "change:thumbnails"];
  for (const e of events) model.on(e, drawAll);
  drawAll();
  return () => { for (const e of events) model.off(e, drawAll); };
}

export default { render };
