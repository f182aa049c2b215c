// Decodes grayscale PNGs (8 or 16 bits, not interlaced) into raw sample values, keeping
// all 16 bits: browsers reduce 16-bit PNGs to 8 bits when they draw them, so the viewer
// does its own decoding and applies window/level to the full values.
"use strict";

const Png16 = (() => {
  const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

  function paeth(a, b, c) {
    const p = a + b - c;
    const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
    if (pa <= pb && pa <= pc) return a;
    return pb <= pc ? b : c;
  }

  async function inflate(bytes) {
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  // Returns {width, height, bitDepth, samples: Uint16Array}.
  async function decode(buffer) {
    const bytes = new Uint8Array(buffer);
    const view = new DataView(buffer);
    for (let i = 0; i < 8; i++) {
      if (bytes[i] !== SIGNATURE[i]) throw new Error("not a PNG");
    }
    let pos = 8, width = 0, height = 0, bitDepth = 0, colorType = -1, interlace = 0;
    const idat = [];
    while (pos + 8 <= bytes.length) {
      const len = view.getUint32(pos);
      const type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
      const data = bytes.subarray(pos + 8, pos + 8 + len);
      if (type === "IHDR") {
        width = view.getUint32(pos + 8);
        height = view.getUint32(pos + 12);
        bitDepth = data[8];
        colorType = data[9];
        interlace = data[12];
      } else if (type === "IDAT") {
        idat.push(data);
      } else if (type === "IEND") {
        break;
      }
      pos += 12 + len;
    }
    if (colorType !== 0 || (bitDepth !== 8 && bitDepth !== 16) || interlace !== 0) {
      throw new Error(`unsupported PNG (color type ${colorType}, ${bitDepth} bits)`);
    }
    const total = idat.reduce((n, d) => n + d.length, 0);
    const joined = new Uint8Array(total);
    let off = 0;
    for (const d of idat) { joined.set(d, off); off += d.length; }
    const raw = await inflate(joined);
    const bpp = bitDepth / 8;
    const stride = width * bpp;
    if (raw.length < height * (stride + 1)) throw new Error("PNG data too short");
    const out = new Uint8Array(height * stride);
    for (let y = 0; y < height; y++) {
      const filter = raw[y * (stride + 1)];
      const src = y * (stride + 1) + 1;
      const dst = y * stride;
      const prev = dst - stride;
      for (let x = 0; x < stride; x++) {
        const r = raw[src + x];
        const a = x >= bpp ? out[dst + x - bpp] : 0;
        const b = y > 0 ? out[prev + x] : 0;
        const c = x >= bpp && y > 0 ? out[prev + x - bpp] : 0;
        let v;
        switch (filter) {
          case 0: v = r; break;
          case 1: v = r + a; break;
          case 2: v = r + b; break;
          case 3: v = r + ((a + b) >> 1); break;
          case 4: v = r + paeth(a, b, c); break;
          default: throw new Error(`bad PNG filter ${filter}`);
        }
        out[dst + x] = v & 255;
      }
    }
    const samples = new Uint16Array(width * height);
    if (bitDepth === 16) {
      for (let i = 0; i < samples.length; i++) samples[i] = (out[2 * i] << 8) | out[2 * i + 1];
    } else {
      for (let i = 0; i < samples.length; i++) samples[i] = out[i] * 257;
    }
    return { width, height, bitDepth, samples };
  }

  return { decode };
})();
