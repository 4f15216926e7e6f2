// The MNIST playground: draw digits, load test digits, place adversaries one by one.
import {
  Session,
  wireTransport,
  drawCells,
  cellAt,
  lineCells,
  hexColour,
  isTyping,
  showNotice,
  announce,
  wireGridKeys,
  drawCursor,
} from "/static/common.js";

const SIZE = 28;
const canvas = document.getElementById("board");
let palettes = null;
let paletteName = "article";
let tool = "draw";
let last = null; // last cell of the stroke
let drawing = false;
let lastFrame = null;

const session = new Session("mnist", {
  onHello(hello) {
    palettes = hello.palettes;
    buildBars();
    if (!hello.adversary) {
      const b = document.getElementById("tool-adversary");
      b.disabled = true;
      b.title = "this server runs no MNIST adversary";
    }
    transport.start(hello);
  },
  onFrame(frame) {
    lastFrame = frame;
    draw(frame);
    showStats(frame.header);
    transport.show(frame.header);
  },
  onClose: () => showNotice("The session has ended (server stopped or connection lost): reload the page.", "error"),
});
const transport = wireTransport(session, (name) => {
  paletteName = name;
  colourBars();
});
paletteName = document.getElementById("palette").value;

function draw(frame) {
  const ctx = drawCells(canvas, frame.rgba, SIZE, SIZE);
  const s = canvas.width / SIZE;
  ctx.strokeStyle = "rgba(0, 0, 0, 0.06)";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let i = 1; i < SIZE; i++) {
    ctx.moveTo(i * s + 0.5, 0);
    ctx.lineTo(i * s + 0.5, canvas.height);
    ctx.moveTo(0, i * s + 0.5);
    ctx.lineTo(canvas.width, i * s + 0.5);
  }
  ctx.stroke();
  ctx.fillStyle = "#000";
  for (let i = 0; i < frame.marks.length; i++) {
    if (!frame.marks[i]) continue;
    const r = Math.floor(i / SIZE), c = i % SIZE;
    ctx.fillRect(c * s + s * 0.3, r * s + s * 0.3, s * 0.4, s * 0.4);
  }
  drawCursor(canvas, ctx, SIZE, SIZE);
}

function buildBars() {
  const bars = document.getElementById("bars");
  bars.replaceChildren();
  for (let d = 0; d < 10; d++) {
    const label = document.createElement("span");
    label.textContent = d;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.id = `bar-${d}`;
    bar.append(fill);
    const share = document.createElement("span");
    share.id = `share-${d}`;
    share.textContent = "0 %";
    bars.append(label, bar, share);
  }
  colourBars();
}

function colourBars() {
  if (!palettes) return;
  for (let d = 0; d < 10; d++) {
    document.getElementById(`bar-${d}`).style.background = hexColour(palettes[paletteName][d]);
  }
}

function showStats(h) {
  for (let d = 0; d < 10; d++) {
    const share = h.alive ? h.counts[d] / h.alive : 0;
    document.getElementById(`bar-${d}`).style.width = `${(100 * share).toFixed(1)}%`;
    document.getElementById(`share-${d}`).textContent = `${(100 * share).toFixed(0)} %`;
  }
  const maj = document.getElementById("majority");
  maj.textContent = h.majority === null ? "-" : h.majority;
  maj.style.color = h.majority === null ? "" : hexColour(palettes[h.palette][h.majority]);
  document.getElementById("majority-share").textContent =
    h.majority === null ? "no living cell" : `${((100 * h.counts[h.majority]) / h.alive).toFixed(0)} % of ${h.alive} cells`;
  document.getElementById("adv-count").textContent = h.adversaries;
  document.getElementById("loaded").textContent = h.label === null ? "none (drawn)" : `a test ${h.label}`;
  // Read out when the majority or the adversaries change (not every frame).
  const said = h.majority === null ? "no living cell" : `majority ${h.majority}`;
  if (said !== lastSaid[0] || h.adversaries !== lastSaid[1]) {
    lastSaid = [said, h.adversaries];
    const share = h.majority === null ? "" : `, ${((100 * h.counts[h.majority]) / h.alive).toFixed(0)} % of ${h.alive} cells`;
    announce(`${said}${share}; ${h.adversaries} adversarial cells`);
  }
}
let lastSaid = [null, null];

// ------------------------------------------------------------------ drawing
function brush(cell, erase) {
  const [r, c] = cell;
  const out = [];
  const put = (dr, dc, v) => {
    const rr = r + dr, cc = c + dc;
    if (rr >= 0 && rr < SIZE && cc >= 0 && cc < SIZE) out.push([rr, cc, v]);
  };
  if (erase) {
    for (const [dr, dc] of [[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]]) put(dr, dc, 0);
    return out;
  }
  put(0, 0, 1);
  for (const [dr, dc] of [[1, 0], [-1, 0], [0, 1], [0, -1]]) put(dr, dc, 0.55);
  for (const [dr, dc] of [[1, 1], [-1, 1], [1, -1], [-1, -1]]) put(dr, dc, 0.2);
  return out;
}

function stroke(cells, ev) {
  const erase = tool === "erase" || ev.buttons === 2 || ev.button === 2;
  if (tool === "adversary" && !erase) {
    session.send({ type: "adversary", cells }, ev.timeStamp);
    return;
  }
  const best = new Map();
  for (const cell of cells) {
    for (const [r, c, v] of brush(cell, erase)) {
      const k = r * SIZE + c;
      if (!best.has(k) || (erase ? false : v > best.get(k)[2])) best.set(k, [r, c, v]);
    }
  }
  session.send({ type: "paint", cells: [...best.values()], blend: erase ? "set" : "max" }, ev.timeStamp);
}

canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
// The grid from the keyboard: arrows move the cursor, Enter or Space draw (or place an
// adversary), Delete erases.
wireGridKeys(
  canvas,
  () => [SIZE, SIZE],
  (cell, erase, ev) => stroke([cell], { buttons: erase ? 2 : 0, button: erase ? 2 : 0, timeStamp: ev.timeStamp }),
  () => lastFrame && draw(lastFrame),
);
canvas.addEventListener("pointerdown", (ev) => {
  const cell = cellAt(canvas, ev, SIZE, SIZE);
  if (!cell) return;
  canvas.setPointerCapture(ev.pointerId);
  drawing = true;
  last = cell;
  stroke([cell], ev);
});
canvas.addEventListener("pointermove", (ev) => {
  if (!drawing) return;
  const cell = cellAt(canvas, ev, SIZE, SIZE);
  if (!cell || (last && cell[0] === last[0] && cell[1] === last[1])) return;
  const cells = lineCells(last, cell);
  last = cell;
  stroke(cells, ev);
});
for (const name of ["pointerup", "pointercancel"]) {
  canvas.addEventListener(name, () => {
    drawing = false;
    last = null;
  });
}

function setTool(name) {
  tool = name;
  for (const t of ["draw", "erase", "adversary"]) {
    document.getElementById(`tool-${t}`).setAttribute("aria-pressed", String(t === name));
  }
  announce({ draw: "Draw tool", erase: "Erase tool", adversary: "Adversary tool: each click places adversarial cells" }[name]);
}
document.getElementById("tool-draw").addEventListener("click", () => setTool("draw"));
document.getElementById("tool-erase").addEventListener("click", () => setTool("erase"));
document.getElementById("tool-adversary").addEventListener("click", () =>
  setTool(tool === "adversary" ? "draw" : "adversary"),
);
document.getElementById("clear").addEventListener("click", (ev) => session.send({ type: "clear" }, ev.timeStamp));
document.getElementById("remove-adv").addEventListener("click", (ev) =>
  session.send({ type: "remove_adversaries" }, ev.timeStamp),
);

const digits = document.getElementById("digits");
for (let d = 0; d < 10; d++) {
  const b = document.createElement("button");
  b.id = `digit-${d}`;
  b.textContent = d;
  b.addEventListener("click", (ev) => session.send({ type: "load_digit", digit: d }, ev.timeStamp));
  digits.append(b);
}
document.addEventListener("keydown", (ev) => {
  if (isTyping(ev) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.key >= "0" && ev.key <= "9") session.send({ type: "load_digit", digit: Number(ev.key) }, ev.timeStamp);
});

session.connect();
