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
  stepsPerSecond: null,
  latencies: [],
  lastLatency: null,
  step: 0,
  errors: [],
  notices: [],
};
window.ncaStats = stats;

const PING_MS = 10000; // an open page says so this often (the server frees silent sessions)
const RATE_WINDOW_MS = 2000;

export class Session {
  constructor(kind, handlers) {
    this.kind = kind;
    this.handlers = handlers;
    this.seq = 0;
    this.pending = new Map(); // seq -> time of the user's event
    this.history = []; // [time, step] of drawn frames while running, last 2 s
    this.lastFrame = 0;
    this.closed = false;
    this.busy = false;
    this.leaving = false;
    this.ping = null;
    window.ncaSession = this; // for the console and the browser tests
    // Leaving the page (a link, back/forward, closing the tab) frees the session at once,
    // also when the browser keeps the page in its back/forward cache; a page shown again
    // from that cache starts afresh. A hidden page's session stops computing.
    window.addEventListener("pagehide", () => this.leave());
    window.addEventListener("pageshow", (ev) => {
      if (ev.persisted) location.reload();
    });
    document.addEventListener("visibilitychange", () => this.visibility());
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws/${this.kind}`);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (ev) => {
      if (this.ws === ws) this.receive(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.closed = true;
      this.stopPing();
      showRate(null, "ended");
      setTransport(false);
      if (this.leaving || this.busy) return; // the busy notice stays
      if (ev.reason === "nobody watched this session" && !document.hidden) {
        this.reconnect(); // a page frozen in the background and now shown again
        showNotice("The previous session was closed while this page was not shown; a new one started.", "info");
        return;
      }
      if (ev.reason === "nobody watched this session") return; // reconnects when shown
      this.handlers.onClose && this.handlers.onClose();
    };
    this.ws = ws;
    this.closed = false;
    this.busy = false;
    this.leaving = false;
    setTransport(true);
    this.history = [];
    this.lastFrame = 0;
    this.startPing();
  }

  // A new session in place of this one (its state is not kept).
  reconnect() {
    const old = this.ws;
    this.ws = null;
    if (old && old.readyState <= WebSocket.OPEN) old.close(1000, "reconnecting");
    this.connect();
  }

  leave() {
    this.leaving = true;
    this.stopPing();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "page left");
  }

  visibility() {
    if (document.hidden) {
      this.send({ type: "visible", on: false }); // stops computing; the pings keep the slot
      return;
    }
    if (this.closed && !this.busy && !this.leaving) {
      this.reconnect();
      showNotice("The previous session was closed while this page was not shown; a new one started.", "info");
      return;
    }
    this.send({ type: "visible", on: true });
    this.startPing();
  }

  startPing() {
    this.stopPing();
    // An open page (shown or in a background tab) says so; a page the browser froze or
    // dropped cannot, and the server frees its session.
    this.ping = setInterval(() => this.send({ type: "visible", on: !document.hidden }), PING_MS);
  }

  stopPing() {
    if (this.ping !== null) clearInterval(this.ping);
    this.ping = null;
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
      if (msg.type === "hello") {
        this.handlers.onHello(msg);
        if (document.hidden) this.send({ type: "visible", on: false });
      } else if (msg.type === "busy") {
        this.busy = true;
        showNotice(msg.message, "busy");
      } else if (msg.type === "error") {
        stats.errors.push(msg.message);
        showNotice(msg.message, "error");
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
    const last = this.history.length ? this.history[this.history.length - 1][1] : null;
    if (!header.running || (last !== null && header.step < last)) this.history = [];
    stats.step = header.step;
    if (header.running) this.history.push([now, header.step]);
    while (this.history.length > 2 && now - this.history[0][0] > RATE_WINDOW_MS) this.history.shift();
    if (!header.running) {
      stats.stepsPerSecond = null;
      showRate(null, header.playing ? "waiting" : "paused");
    } else if (this.history.length >= 3 && now - this.history[0][0] >= 200) {
      const [t0, s0] = this.history[0];
      stats.stepsPerSecond = ((header.step - s0) * 1000) / (now - t0);
      showRate(stats.stepsPerSecond);
    } else {
      showRate(null, "measuring");
    }
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
  }
}

// Play and Step only while there is a session to run.
function setTransport(on) {
  for (const id of ["play", "step-once"]) {
    const el = document.getElementById(id);
    if (el) el.disabled = !on;
  }
  const play = document.getElementById("play");
  if (play && !on) {
    play.textContent = "Play";
    play.dataset.playing = "false";
  }
}

// The steps/s readout: a measured rate, or what the session is doing instead.
function showRate(rate, state) {
  const el = document.getElementById("rate");
  if (!el) return;
  if (rate !== null) el.textContent = `${rate.toFixed(0)} steps/s`;
  else el.textContent = { paused: "paused", ended: "- steps/s", waiting: "stopped while hidden", measuring: "measuring steps/s" }[state];
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
    // Space plays or pauses only when no control has the focus: on a focused button,
    // link, box or the grid, Space is that control's own key.
    if (ev.key === " " && !isControl(ev.target) && !ev.ctrlKey && !ev.metaKey && !ev.altKey) {
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

// Whether the element has keys of its own (buttons, links, form fields, the grid...).
export function isControl(t) {
  if (!t || t === document.body || t === document.documentElement) return false;
  if (["BUTTON", "A", "INPUT", "SELECT", "TEXTAREA", "SUMMARY", "OPTION", "CANVAS", "LABEL"].includes(t.tagName)) return true;
  return t.isContentEditable || t.hasAttribute("role") || t.tabIndex >= 0;
}

// One notice under the grid (also read out: it is a live region). An "ended" notice does
// not replace a busy one (the server closes a busy page's socket just after saying so).
export function showNotice(text, kind) {
  const el = document.getElementById("notice");
  if (el.dataset.kind === "busy" && kind !== "busy" && text) return;
  // Flags (--max_sessions) in code, never broken across lines.
  el.replaceChildren(
    ...String(text || "")
      .split(/(--[a-z_]+)/)
      .map((part, i) => {
        if (i % 2 === 0) return document.createTextNode(part);
        const code = document.createElement("code");
        code.textContent = part;
        return code;
      }),
  );
  el.className = `notice ${kind || ""}`;
  el.dataset.kind = kind || "";
  el.hidden = !text;
  if (text) stats.notices.push(text);
}

// Say ``text`` to screen readers (a polite live region), without showing it.
export function announce(text) {
  const el = document.getElementById("announce");
  if (el && el.textContent !== text) el.textContent = text;
}

// The grid from the keyboard: the arrows move a cursor (Shift: 4 cells), Enter or Space
// acts at it, Delete or Backspace erases there. ``act(cell, erase)``; ``moved()`` redraws.
export function wireGridKeys(canvas, size, act, moved) {
  canvas.tabIndex = 0;
  canvas._cursor = null;
  canvas.addEventListener("focus", () => {
    const [hh, ww] = size();
    if (!canvas._cursor) canvas._cursor = [Math.floor(hh / 2), Math.floor(ww / 2)];
    moved();
  });
  canvas.addEventListener("blur", moved);
  canvas.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const [hh, ww] = size();
    const by = ev.shiftKey ? 4 : 1;
    const moves = { ArrowUp: [-by, 0], ArrowDown: [by, 0], ArrowLeft: [0, -by], ArrowRight: [0, by] };
    let cur = canvas._cursor || [Math.floor(hh / 2), Math.floor(ww / 2)];
    if (ev.key in moves) {
      const [dr, dc] = moves[ev.key];
      cur = [Math.min(hh - 1, Math.max(0, cur[0] + dr)), Math.min(ww - 1, Math.max(0, cur[1] + dc))];
      canvas._cursor = cur;
      announce(`row ${cur[0] + 1}, column ${cur[1] + 1}`);
      moved();
    } else if (ev.key === "Enter" || ev.key === " ") {
      act(cur, false, ev);
    } else if (ev.key === "Delete" || ev.key === "Backspace") {
      act(cur, true, ev);
    } else {
      return;
    }
    ev.preventDefault();
  });
}

// The keyboard cursor on the grid, while the grid has the focus.
export function drawCursor(canvas, ctx, h, w) {
  if (!canvas._cursor || document.activeElement !== canvas) return;
  const s = canvas.width / w;
  const [r, c] = canvas._cursor;
  ctx.lineWidth = 2;
  ctx.strokeStyle = "#fff";
  ctx.strokeRect(c * s - 1, r * s - 1, s + 2, s + 2);
  ctx.strokeStyle = "#1d1d1f";
  ctx.strokeRect(c * s + 1, r * s + 1, s - 2, s - 2);
}
