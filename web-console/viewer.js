// The radiograph viewer: window/level on the 16-bit preview in the browser (drag: left and
// right change the width, up and down the level; arrow keys too), a heatmap overlay with
// a toggle and opacity, and the findings treemap.
"use strict";

class Viewer {
  // canvas: the <canvas>; image: {width, height, samples}; info: the preview-info JSON.
  constructor(canvas, image, info) {
    this.canvas = canvas;
    this.image = image;
    this.info = info;
    this.span = Math.max(info.max - info.min, 1e-6);
    this.center = info.window_center;
    this.width = info.window_width;
    this.invert = !!info.invert;
    canvas.width = image.width;
    canvas.height = image.height;
    this.ctx = canvas.getContext("2d");
    this.pixels = this.ctx.createImageData(image.width, image.height);
    this.lut = new Uint8ClampedArray(65536);
    this.pending = false;
    this.listeners = [];
    this.attach();
    this.render();
  }

  // Modality value of a preview sample.
  value(sample) {
    return this.info.min + (sample / 65535) * this.span;
  }

  setWindow(center, width) {
    this.center = center;
    this.width = Math.max(width, this.span / 4096);
    this.schedule();
  }

  reset() {
    this.setWindow(this.info.window_center, this.info.window_width);
  }

  toggleInvert() {
    this.invert = !this.invert;
    this.schedule();
  }

  onChange(fn) {
    this.listeners.push(fn);
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.render();
    });
  }

  render() {
    // DICOM PS3.3 C.11.2.1.2 linear window, through a 65536-entry table.
    const c = this.center - 0.5, w = this.width - 1;
    const lut = this.lut;
    for (let s = 0; s < 65536; s++) {
      const x = this.value(s);
      let y;
      if (x <= c - w / 2) y = 0;
      else if (x > c + w / 2) y = 255;
      else y = ((x - c) / w + 0.5) * 255;
      lut[s] = this.invert ? 255 - y : y;
    }
    const src = this.image.samples, dst = this.pixels.data;
    for (let i = 0, j = 0; i < src.length; i++, j += 4) {
      const g = lut[src[i]];
      dst[j] = g; dst[j + 1] = g; dst[j + 2] = g; dst[j + 3] = 255;
    }
    this.ctx.putImageData(this.pixels, 0, 0);
    this.canvas.dataset.rendered = "true";
    for (const fn of this.listeners) fn(this.center, this.width);
  }

  attach() {
    const cv = this.canvas;
    let start = null;
    cv.addEventListener("pointerdown", (e) => {
      start = { x: e.clientX, y: e.clientY, c: this.center, w: this.width };
      cv.setPointerCapture(e.pointerId);
    });
    cv.addEventListener("pointermove", (e) => {
      if (!start) return;
      const scale = this.span / Math.max(cv.clientWidth, 1);
      this.setWindow(start.c - (e.clientY - start.y) * scale, start.w + (e.clientX - start.x) * scale);
    });
    const end = () => { start = null; };
    cv.addEventListener("pointerup", end);
    cv.addEventListener("pointercancel", end);
    cv.addEventListener("dblclick", () => this.reset());
    cv.addEventListener("keydown", (e) => {
      const step = this.span / 100;
      const moves = {
        ArrowUp: [step, 0], ArrowDown: [-step, 0], ArrowRight: [0, step], ArrowLeft: [0, -step],
      };
      if (moves[e.key]) {
        e.preventDefault();
        const [dc, dw] = moves[e.key];
        this.setWindow(this.center + dc, this.width + dw);
      } else if (e.key === "r" || e.key === "R") {
        this.reset();
      } else if (e.key === "i" || e.key === "I") {
        this.toggleInvert();
      }
    });
  }
}

// Squarified treemap (Bruls, Huizing, van Wijk) of items {label, value, positive} into a
// container element; each tile is a <div role="listitem"> with its label and percentage.
function renderTreemap(container, items) {
  container.textContent = "";
  container.setAttribute("role", "list");
  const W = container.clientWidth || 400, H = container.clientHeight || 220;
  const data = items.filter((i) => i.value > 0).sort((a, b) => b.value - a.value);
  const total = data.reduce((s, i) => s + i.value, 0);
  if (!total) {
    container.textContent = "No findings to show.";
    return;
  }
  const scale = (W * H) / total;
  const nodes = data.map((d) => ({ ...d, area: d.value * scale }));
  let rect = { x: 0, y: 0, w: W, h: H };
  const worst = (row, side) => {
    const s = row.reduce((a, n) => a + n.area, 0);
    const max = Math.max(...row.map((n) => n.area)), min = Math.min(...row.map((n) => n.area));
    return Math.max((side * side * max) / (s * s), (s * s) / (side * side * min));
  };
  const layout = (row) => {
    const s = row.reduce((a, n) => a + n.area, 0);
    const horizontal = rect.w >= rect.h;
    const side = horizontal ? rect.h : rect.w;
    const thick = s / side;
    let off = 0;
    for (const n of row) {
      const len = n.area / thick;
      n.rect = horizontal
        ? { x: rect.x, y: rect.y + off, w: thick, h: len }
        : { x: rect.x + off, y: rect.y, w: len, h: thick };
      off += len;
    }
    rect = horizontal
      ? { x: rect.x + thick, y: rect.y, w: rect.w - thick, h: rect.h }
      : { x: rect.x, y: rect.y + thick, w: rect.w, h: rect.h - thick };
  };
  let row = [];
  for (const n of nodes) {
    const side = Math.min(rect.w, rect.h);
    if (row.length === 0 || worst([...row, n], side) <= worst(row, side)) {
      row.push(n);
    } else {
      layout(row);
      row = [n];
    }
  }
  if (row.length) layout(row);
  for (const n of nodes) {
    const tile = document.createElement("div");
    tile.className = "tile" + (n.positive ? " positive" : "");
    tile.setAttribute("role", "listitem");
    tile.style.left = `${(n.rect.x / W) * 100}%`;
    tile.style.top = `${(n.rect.y / H) * 100}%`;
    tile.style.width = `${(n.rect.w / W) * 100}%`;
    tile.style.height = `${(n.rect.h / H) * 100}%`;
    const pct = `${(n.value * 100).toFixed(1)}%`;
    tile.title = `${n.label}: ${pct}`;
    tile.textContent = `${n.label} ${pct}`;
    container.appendChild(tile);
  }
}
