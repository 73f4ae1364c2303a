// VoxelHub SliceViewer: three planes drawn on canvases from raw slice buffers sent by the kernel.
// Window/level, overlays, crosshair and the pointer readout are computed here; the kernel is only
// asked for slices, one request per plane in flight (latest position wins).

const PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231",
  "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe"];
const TYPES = {
  int8: Int8Array, uint8: Uint8Array, int16: Int16Array, uint16: Uint16Array,
  int32: Int32Array, uint32: Uint32Array, float32: Float32Array, float64: Float64Array,
};
const ROWS = [1, 0, 0];
const COLS = [2, 2, 1];
const REQUEST_TIMEOUT_MS = 10000;
const PREVIEW_AFTER_MS = 60; // ask for the coarse level first when full resolution is slower

function typed(buffer, dtype) {
  const T = TYPES[dtype];
  if (buffer instanceof ArrayBuffer) return new T(buffer);
  const { buffer: ab, byteOffset, byteLength } = buffer;
  if (byteOffset % T.BYTES_PER_ELEMENT === 0) return new T(ab, byteOffset, byteLength / T.BYTES_PER_ELEMENT);
  return new T(new Uint8Array(ab, byteOffset, byteLength).slice().buffer); // copy only to align
}

// Integer slices are mapped through a lookup table (value -> packed RGBA grey); LITTLE is the
// byte order of the packed pixel (all current browsers are little-endian, checked here anyway).
const LITTLE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
const LUT_DTYPES = { int8: -128, uint8: 0, int16: -32768, uint16: 0 };
function pack(r, g, b) {
  return LITTLE ? ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0 : ((r << 24) | (g << 16) | (b << 8) | 255) >>> 0;
}
function unpackGrey(p) { return LITTLE ? p & 255 : p >>> 24; }

function rgb(css) {
  const m = /^#?([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(css || "");
  return m ? [parseInt(m[1], 16), parseInt(m[2], 16), parseInt(m[3], 16)] : [255, 0, 0];
}

function log(entry) {
  const g = globalThis;
  if (!g.__voxelhub_slice_log) g.__voxelhub_slice_log = [];
  g.__voxelhub_slice_log.push(entry);
  if (g.__voxelhub_slice_log.length > 5000) g.__voxelhub_slice_log.shift();
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "vh-slices";
  const bar = document.createElement("div");
  bar.className = "vh-bar";
  const title = document.createElement("span");
  title.className = "vh-title";
  const presetSel = document.createElement("select");
  presetSel.className = "vh-preset";
  presetSel.title = "window preset";
  const wl = document.createElement("span");
  wl.className = "vh-wl";
  const opacity = document.createElement("input");
  opacity.type = "range"; opacity.min = "0"; opacity.max = "1"; opacity.step = "0.05";
  opacity.className = "vh-opacity"; opacity.title = "overlay opacity";
  bar.append(title, presetSel, wl, opacity);
  const panels = document.createElement("div");
  panels.className = "vh-panels";
  const readout = document.createElement("div");
  readout.className = "vh-readout";
  readout.textContent = "\u00a0";
  root.append(bar, panels, readout);
  el.appendChild(root);

  const canvases = [], labels = [], offscreen = [];
  const images = [null, null, null]; // per plane: { img: ImageData, u32: Uint32Array }, reused
  const slices = [null, null, null];
  let lutKey = "", lut = null;
  const inflight = [0, 0, 0];
  const lastFullMs = [Infinity, Infinity, Infinity];
  let seq = 0;
  let colorCache = {};

  for (let a = 0; a < 3; a++) {
    const panel = document.createElement("div");
    panel.className = "vh-panel";
    const label = document.createElement("div");
    label.className = "vh-plane-label";
    const canvas = document.createElement("canvas");
    canvas.tabIndex = 0;
    canvas.className = "vh-canvas";
    canvas.dataset.axis = String(a);
    panel.append(label, canvas);
    panels.appendChild(panel);
    canvases.push(canvas); labels.push(label); offscreen.push(document.createElement("canvas"));
    attachInput(a, canvas);
  }

  function shape() { return model.get("shape"); }
  function spacing() { return model.get("spacing"); }

  function layout() {
    const sh = shape(), sp = spacing(), size = model.get("display_size");
    for (let a = 0; a < 3; a++) {
      const w = sh[COLS[a]] * sp[COLS[a]], h = sh[ROWS[a]] * sp[ROWS[a]];
      const scale = size / Math.max(w, h);
      canvases[a].width = Math.max(1, Math.round(w * scale));
      canvases[a].height = Math.max(1, Math.round(h * scale));
      canvases[a].style.width = canvases[a].width + "px";
      canvases[a].style.height = canvases[a].height + "px";
    }
  }

  function syncBar() {
    title.textContent = model.get("title") + (model.get("flags").length ? "  \u26a0 " + model.get("flags").join(", ") : "");
    const presets = model.get("presets"), current = model.get("preset");
    const names = Object.keys(presets);
    if (!names.includes(current)) names.push(current);
    presetSel.replaceChildren(...names.map((n) => {
      const o = document.createElement("option"); o.value = n; o.textContent = n; return o;
    }));
    presetSel.value = current;
    const c = model.get("window_center"), w = model.get("window_width");
    wl.textContent = `W ${w.toFixed(0)} L ${c.toFixed(0)}`;
    opacity.value = String(model.get("opacity"));
    opacity.style.display = model.get("has_mask") ? "" : "none";
  }

  function colorOf(label) {
    if (!(label in colorCache)) {
      const css = model.get("label_colors")[String(label)] || PALETTE[(label - 1) % PALETTE.length];
      colorCache[label] = rgb(css);
    }
    return colorCache[label];
  }

  function request(a, force) {
    const now = performance.now();
    if (inflight[a] && !force && now - inflight[a] < REQUEST_TIMEOUT_MS) return;
    inflight[a] = now;
    const index = model.get("cursor")[a];
    seq += 1;
    const preview = !slices[a] || lastFullMs[a] > PREVIEW_AFTER_MS;
    log({ kind: "request", axis: a, index, seq, preview, t: now });
    model.send({ type: "slice", axis: a, index, seq, preview });
  }

  function greyLut(dtype, lo, k) {
    const key = `${dtype}|${lo}|${k}`;
    if (key === lutKey) return lut;
    const min = LUT_DTYPES[dtype];
    const n = dtype.endsWith("8") ? 256 : 65536;
    const table = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      let g = (i + min - lo) * k;
      g = g < 0 ? 0 : g > 255 ? 255 : g | 0;
      table[i] = pack(g, g, g);
    }
    lutKey = key; lut = table;
    return table;
  }

  // Pixels of plane a's slice (window, overlay) into its offscreen canvas; reuses the ImageData.
  function render(a) {
    const s = slices[a];
    if (!s) return;
    const [h, w] = s.shape;
    const off = offscreen[a];
    if (off.width !== w || off.height !== h) { off.width = w; off.height = h; }
    let im = images[a];
    if (!im || im.img.width !== w || im.img.height !== h) {
      const img = off.getContext("2d").createImageData(w, h);
      im = images[a] = { img, u32: new Uint32Array(img.data.buffer) };
    }
    const out = im.u32;
    const width = Math.max(model.get("window_width"), 1e-6);
    const lo = model.get("window_center") - width / 2;
    const k = 255 / width;
    const flip = a !== 0 && model.get("flip_z");
    const data = s.data, mask = s.mask;
    const dtype = s.dtype;
    if (dtype in LUT_DTYPES) {
      const table = greyLut(dtype, lo, k), shift = -LUT_DTYPES[dtype];
      for (let r = 0; r < h; r++) {
        const src = (flip ? h - 1 - r : r) * w;
        const o = r * w;
        for (let c = 0; c < w; c++) out[o + c] = table[data[src + c] + shift];
      }
    } else {
      for (let r = 0; r < h; r++) {
        const src = (flip ? h - 1 - r : r) * w;
        const o = r * w;
        for (let c = 0; c < w; c++) {
          let g = (data[src + c] - lo) * k;
          g = g < 0 ? 0 : g > 255 ? 255 : g | 0;
          out[o + c] = pack(g, g, g);
        }
      }
    }
    if (mask) {
      const alpha = model.get("opacity");
      for (let r = 0; r < h; r++) {
        const src = (flip ? h - 1 - r : r) * w;
        const o = r * w;
        for (let c = 0; c < w; c++) {
          const m = mask[src + c];
          if (m > 0) {
            const g = unpackGrey(out[o + c]);
            const col = colorOf(m);
            out[o + c] = pack(
              (g + (col[0] - g) * alpha) | 0, (g + (col[1] - g) * alpha) | 0, (g + (col[2] - g) * alpha) | 0);
          }
        }
      }
    }
    off.getContext("2d").putImageData(im.img, 0, 0);
  }

  // The rendered slice scaled onto the visible canvas, with the crosshair and the label.
  function compose(a) {
    const s = slices[a];
    const canvas = canvases[a];
    const ctx = canvas.getContext("2d");
    if (!s) { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height); return; }
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(offscreen[a], 0, 0, canvas.width, canvas.height);
    const cur = model.get("cursor"), sh = shape();
    const x = ((cur[COLS[a]] + 0.5) / sh[COLS[a]]) * canvas.width;
    let row = cur[ROWS[a]];
    if (a !== 0 && model.get("flip_z")) row = sh[0] - 1 - row;
    const y = ((row + 0.5) / sh[ROWS[a]]) * canvas.height;
    ctx.strokeStyle = "rgba(0, 255, 120, 0.55)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(x, 0); ctx.lineTo(x, canvas.height);
    ctx.moveTo(0, y); ctx.lineTo(canvas.width, y);
    ctx.stroke();
    const names = model.get("plane_names");
    labels[a].textContent = `${names[a]} ${cur[a] + 1}/${sh[a]}` + (s.level > 0 ? " (preview)" : "");
    canvas.dataset.index = String(s.index);
    canvas.dataset.level = String(s.level);
  }

  function draw(a) { render(a); compose(a); }

  function drawAll() { for (let a = 0; a < 3; a++) draw(a); }
  function composeAll() { for (let a = 0; a < 3; a++) compose(a); }

  function onMessage(msg, buffers) {
    if (!msg || msg.type !== "slice") return;
    const a = msg.axis;
    log({ kind: "recv", axis: a, index: msg.index, level: msg.level, seq: msg.seq, kernel_ms: msg.kernel_ms, t: performance.now() });
    const want = model.get("cursor")[a];
    if (msg.index === want) {
      const cur = slices[a];
      if (!cur || cur.index !== msg.index || msg.level <= cur.level) {
        slices[a] = {
          index: msg.index, level: msg.level, factor: msg.factor, shape: msg.shape, dtype: msg.dtype,
          data: typed(buffers[0], msg.dtype),
          mask: msg.mask_dtype ? typed(buffers[1], msg.mask_dtype) : null,
        };
        draw(a);
        log({ kind: "drawn", axis: a, index: msg.index, level: msg.level, final: msg.final, seq: msg.seq, t: performance.now() });
      }
    }
    if (msg.final) {
      if (inflight[a]) lastFullMs[a] = performance.now() - inflight[a];
      inflight[a] = 0;
      if (model.get("cursor")[a] !== msg.index) request(a);
    }
  }

  function indexAt(a, event) {
    const canvas = canvases[a];
    const rect = canvas.getBoundingClientRect();
    const fx = (event.clientX - rect.left) / rect.width, fy = (event.clientY - rect.top) / rect.height;
    if (fx < 0 || fx >= 1 || fy < 0 || fy >= 1) return null;
    const sh = shape();
    const idx = model.get("cursor").slice();
    idx[COLS[a]] = Math.floor(fx * sh[COLS[a]]);
    let row = Math.floor(fy * sh[ROWS[a]]);
    if (a !== 0 && model.get("flip_z")) row = sh[0] - 1 - row;
    idx[ROWS[a]] = row;
    return idx;
  }

  function showReadout(a, idx) {
    const s = slices[a];
    if (!idx || !s) return;
    const A = model.get("affine");
    const v = [idx[2], idx[1], idx[0], 1];
    const mm = [0, 1, 2].map((i) => A[i][0] * v[0] + A[i][1] * v[1] + A[i][2] * v[2] + A[i][3]);
    const f = s.factor;
    const [h, w] = s.shape;
    const r = Math.min(Math.floor(idx[ROWS[a]] / f[ROWS[a]]), h - 1);
    const c = Math.min(Math.floor(idx[COLS[a]] / f[COLS[a]]), w - 1);
    const value = s.data[r * w + c];
    let text = `LPS ${mm.map((x) => x.toFixed(1)).join(", ")} mm | voxel z${idx[0]} y${idx[1]} x${idx[2]} | ` +
      `${Number.isInteger(value) ? value : value.toFixed(2)} ${model.get("units")}`;
    if (s.mask) text += ` | label ${s.mask[r * w + c]}`;
    if (s.level > 0) text += " (preview)";
    readout.textContent = text;
  }

  function setCursor(next) {
    const sh = shape();
    const c = next.map((v, i) => Math.max(0, Math.min(sh[i] - 1, v)));
    model.set("cursor", c);
    model.save_changes();
  }

  function scroll(a, step) {
    const c = model.get("cursor").slice();
    c[a] += step;
    setCursor(c);
  }

  function attachInput(a, canvas) {
    let drag = null;
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    canvas.addEventListener("mousedown", (e) => {
      canvas.focus();
      const windowing = e.button === 2 || e.shiftKey;
      drag = { windowing, x: e.clientX, y: e.clientY, c: model.get("window_center"), w: model.get("window_width") };
      if (!windowing) { const idx = indexAt(a, e); if (idx) setCursor(idx); }
      e.preventDefault();
    });
    window.addEventListener("mouseup", () => { drag = null; });
    canvas.addEventListener("mousemove", (e) => {
      showReadout(a, indexAt(a, e));
      if (!drag) return;
      if (drag.windowing) {
        const scale = Math.max(1, drag.w / 256);
        model.set("window_width", Math.max(1, drag.w + (e.clientX - drag.x) * scale));
        model.set("window_center", drag.c - (e.clientY - drag.y) * scale);
        model.set("preset", "custom");
        model.save_changes();
      } else {
        const idx = indexAt(a, e); if (idx) setCursor(idx);
      }
    });
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      scroll(a, e.deltaY < 0 ? 1 : -1);
    }, { passive: false });
    canvas.addEventListener("keydown", (e) => {
      const steps = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 10, PageDown: -10 };
      if (e.key in steps) { scroll(a, steps[e.key]); e.preventDefault(); e.stopPropagation(); }
      else if (e.key === "Home") { const c = model.get("cursor").slice(); c[a] = 0; setCursor(c); e.preventDefault(); e.stopPropagation(); }
      else if (e.key === "End") { const c = model.get("cursor").slice(); c[a] = shape()[a] - 1; setCursor(c); e.preventDefault(); e.stopPropagation(); }
    });
  }

  presetSel.addEventListener("change", () => {
    const name = presetSel.value, p = model.get("presets")[name];
    model.set("preset", name);
    if (p) { model.set("window_center", p[0]); model.set("window_width", p[1]); }
    model.save_changes();
  });
  opacity.addEventListener("input", () => { model.set("opacity", Number(opacity.value)); model.save_changes(); });

  function onCursor() {
    const c = model.get("cursor");
    for (let a = 0; a < 3; a++) if (!slices[a] || slices[a].index !== c[a]) request(a);
    composeAll(); // the crosshair moved: no pixel work until a new slice arrives
  }
  function onLook() { syncBar(); drawAll(); }
  function onColors() { colorCache = {}; drawAll(); }
  function onShape() { layout(); slices[0] = slices[1] = slices[2] = null; onCursor(); }

  model.on("msg:custom", onMessage);
  model.on("change:cursor", onCursor);
  model.on("change:window_center", onLook);
  model.on("change:window_width", onLook);
  model.on("change:preset", syncBar);
  model.on("change:presets", syncBar);
  model.on("change:opacity", onLook);
  model.on("change:label_colors", onColors);
  model.on("change:shape", onShape);
  model.on("change:display_size", () => { layout(); drawAll(); });

  // First slices: the three coarse previews are asked for before any full-resolution slice, so
  // the last plane's preview does not wait for the first planes' full-resolution reads (the
  // kernel answers messages in order).  Both messages of a plane carry the same seq.
  function requestFirst() {
    const now = performance.now(), cur = model.get("cursor"), seqs = [];
    for (let a = 0; a < 3; a++) {
      seq += 1; seqs.push(seq); inflight[a] = now;
      log({ kind: "request", axis: a, index: cur[a], seq, preview: true, t: now });
      model.send({ type: "slice", axis: a, index: cur[a], seq, preview: true, full: false });
    }
    for (let a = 0; a < 3; a++) {
      model.send({ type: "slice", axis: a, index: cur[a], seq: seqs[a], preview: false });
    }
  }

  layout();
  syncBar();
  drawAll();
  requestFirst();

  return () => {
    model.off("msg:custom", onMessage);
    model.off("change:cursor", onCursor);
    model.off("change:window_center", onLook);
    model.off("change:window_width", onLook);
    model.off("change:preset", syncBar);
    model.off("change:presets", syncBar);
    model.off("change:opacity", onLook);
    model.off("change:label_colors", onColors);
    model.off("change:shape", onShape);
    model.off("change:display_size");
  };
}

export default { render };
