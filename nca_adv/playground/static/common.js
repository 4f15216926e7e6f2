// What both playground pages share: the session socket, frame decoding, drawing, the
// palette kept across pages, play/pause/step/speed, and the measured rates.

export const PALETTE_KEY = "nca-adv-palette";

export function savedPalette() {
  try {
    return localStorage.getItem(PALETTE_KEY) || "article";
  } catch (e) {
    return "article";
  }
}

export function savePalette(name) {
  try {
    localStorage.setItem(PALETTE_KEY, name);
  } catch (e) {
    /* storage off: the choice lasts for this page only */
  }
}

// Binary frame: uint32 LE header length, JSON header, RGBA bytes (h*w*4), marks (h*w).
export function decodeFrame(buffer, h, w) {
  const n = new DataView(buffer).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
  h = header.height || h;
  w = header.width || w;
  const rgba = new Uint8ClampedArray(buffer, 4 + n, h * w * 4);
  const marks = new Uint8Array(buffer, 4 + n + h * w * 4, h * w);
  return { header, rgba, marks, h, w };
}

// Measured on the page: CA steps shown per second, and click -> frame drawn latency.
export const stats = {
  frames: 0,
  stepsPerSecond: 0,
  latencies: [],
  lastLatency: null,
  step: 0,
  errors: [],
};
window.ncaStats = stats;

export class Session {
  constructor(kind, handlers) {
    this.kind = kind;
    this.handlers = handlers;
    this.seq = 0;
    this.pending = new Map(); // seq -> time of the user's event
    this.history = []; // [time, step] of drawn frames, last 2 s
    this.lastFrame = 0;
    this.closed = false;
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws/${this.kind}`);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (ev) => this.receive(ev.data);
    ws.onclose = () => {
      this.closed = true;
      this.handlers.onClose && this.handlers.onClose();
    };
    this.ws = ws;
  }

  // Send an action; ``since`` (an event's timeStamp) starts a latency measurement.
  send(action, since) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    action.seq = ++this.seq;
    if (since !== undefined) this.pending.set(action.seq, since);
    this.ws.send(JSON.stringify(action));
  }

  receive(data) {
    if (typeof data === "string") {
      const msg = JSON.parse(data);
      if (msg.type === "hello") this.handlers.onHello(msg);
      else if (msg.type === "busy") this.handlers.onBusy(msg.message);
      else if (msg.type === "error") {
        stats.errors.push(msg.message);
        this.handlers.onError(msg.message);
      }
      return;
    }
    const frame = decodeFrame(data);
    if (frame.header.frame <= this.lastFrame) return;
    this.lastFrame = frame.header.frame;
    this.handlers.onFrame(frame);
    this.account(frame.header);
  }

  account(header) {
    const now = performance.now();
    stats.frames += 1;
    stats.step = header.step;
    this.history.push([now, header.step]);
    while (this.history.length > 2 && now - this.history[0][0] > 2000) this.history.shift();
    const [t0, s0] = this.history[0];
    stats.stepsPerSecond = now > t0 && header.step >= s0 ? ((header.step - s0) * 1000) / (now - t0) : 0;
    if (header.ack !== null) {
      for (const [seq, since] of this.pending) {
        if (seq > header.ack) continue;
        this.pending.delete(seq);
        // The frame is on the canvas; the next animation frame is when it is painted.
        requestAnimationFrame(() => {
          const ms = performance.now() - since;
          stats.lastLatency = ms;
          stats.latencies.push(ms);
          const el = document.getElementById("latency");
          if (el) el.textContent = `${ms.toFixed(0)} ms`;
        });
      }
    }
    const rate = document.getElementById("rate");
    if (rate) rate.textContent = `${stats.stepsPerSecond.toFixed(0)} steps/s`;
  }
}

// Draw an h x w RGBA frame scaled up to ``canvas`` without smoothing.
export function drawCells(canvas, rgba, h, w) {
  if (!canvas._offscreen || canvas._offscreen.width !== w || canvas._offscreen.height !== h) {
    canvas._offscreen = document.createElement("canvas");
    canvas._offscreen.width = w;
    canvas._offscreen.height = h;
  }
  const off = canvas._offscreen;
  off.getContext("2d").putImageData(new ImageData(rgba, w, h), 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
  return ctx;
}

// The cell under a pointer event, or null outside the grid.
export function cellAt(canvas, ev, h, w) {
  const box = canvas.getBoundingClientRect();
  const c = Math.floor(((ev.clientX - box.left) / box.width) * w);
  const r = Math.floor(((ev.clientY - box.top) / box.height) * h);
  return r >= 0 && r < h && c >= 0 && c < w ? [r, c] : null;
}

// Cells on the segment from a to b (inclusive), so a fast stroke leaves no gaps.
export function lineCells(a, b) {
  if (!a) return [b];
  const out = [];
  const n = Math.max(Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]), 1);
  for (let i = 1; i <= n; i++) {
    out.push([Math.round(a[0] + ((b[0] - a[0]) * i) / n), Math.round(a[1] + ((b[1] - a[1]) * i) / n)]);
  }
  return out;
}

export function hexColour(rgb) {
  return `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
}

// Play / pause / single step / speed / palette, wired to a session.
export function wireTransport(session, onPalette) {
  const play = document.getElementById("play");
  const once = document.getElementById("step-once");
  const speed = document.getElementById("speed");
  const speedOut = document.getElementById("speed-value");
  const palette = document.getElementById("palette");
  play.addEventListener("click", (ev) => {
    const on = play.dataset.playing !== "true";
    session.send({ type: "play", on }, ev.timeStamp);
  });
  once.addEventListener("click", (ev) => session.send({ type: "step", n: 1 }, ev.timeStamp));
  speed.addEventListener("input", () => {
    speedOut.textContent = speed.value;
    session.send({ type: "speed", steps_per_frame: Number(speed.value) });
  });
  palette.value = savedPalette();
  palette.addEventListener("change", () => {
    savePalette(palette.value);
    palette.blur(); // the page's keys (digits, space) work again at once
    session.send({ type: "palette", name: palette.value });
    onPalette && onPalette(palette.value);
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === " " && !isTyping(ev)) {
      ev.preventDefault();
      play.click();
    }
  });
  return {
    show(header) {
      play.dataset.playing = header.playing ? "true" : "false";
      play.textContent = header.playing ? "Pause" : "Play";
      if (Number(speed.value) !== header.speed) {
        speed.value = header.speed;
        speedOut.textContent = header.speed;
      }
      document.getElementById("step-count").textContent = header.step;
    },
    start(hello) {
      speed.max = hello.max_speed;
      session.send({ type: "palette", name: palette.value });
      session.send({ type: "speed", steps_per_frame: Number(speed.value) });
      session.send({ type: "play", on: true });
    },
  };
}

export function isTyping(ev) {
  const t = ev.target;
  return t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA") && t.type !== "range";
}

export function showNotice(text, kind) {
  const el = document.getElementById("notice");
  el.textContent = text;
  el.className = `notice ${kind || ""}`;
  el.hidden = !text;
}
