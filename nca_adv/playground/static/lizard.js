// The lizard playground: grow, cut, mix the perturbations, paint growing adversaries.
import {
  Session,
  wireTransport,
  drawCells,
  cellAt,
  lineCells,
  hexColour,
  showNotice,
  announce,
  wireGridKeys,
  drawCursor,
} from "/static/common.js";

const canvas = document.getElementById("board");
const plot = document.getElementById("loss-plot");
let hello = null;
let palettes = null;
let paletteName = "article"; // the saved one, once wireTransport has restored it (below)
let tool = "cut"; // "cut" or an adversary name or "none" (erase adversaries)
let h = 72, w = 72;
let drawing = false;
let last = null;
let lastFrame = null;
let perturbSeq = 0; // the action number of the page's last change to the switch
const history = []; // [loss_target, loss_complete]
// The adversary marks: the red adversary's in red, the others in dark colours that stand
// out on the lizard; the swatches have a white ring, so they show on a pressed button too.
const MARK_COLOURS = { red: [200, 30, 30], tailless: [20, 20, 20] };
const OTHER_MARKS = [
  [20, 20, 20],
  [106, 61, 154],
  [0, 105, 92],
];
// The two loss curves: palette entries, and a dash for the complete lizard's, so that
// they differ by more than their hue.
const CURVE = { target: 3, complete: 2 };
const DASH = { target: [], complete: [6, 4] };

const session = new Session("lizard", {
  onHello(msg) {
    hello = msg;
    palettes = msg.palettes;
    h = msg.height;
    w = msg.width;
    buildSliders(msg);
    buildTargets(msg);
    buildTools(msg);
    buildNotes(msg);
    colourKey();
    transport.start(msg);
  },
  onFrame(frame) {
    lastFrame = frame;
    draw(frame);
    show(frame.header);
    transport.show(frame.header);
  },
  onClose: () => showNotice("The session has ended (server stopped or connection lost): reload the page.", "error"),
});
const transport = wireTransport(session, (name) => {
  paletteName = name;
  colourKey();
});
paletteName = document.getElementById("palette").value; // restored by wireTransport

function markColour(j) {
  const name = hello ? hello.adversaries[j] : null;
  return MARK_COLOURS[name] || OTHER_MARKS[j % OTHER_MARKS.length];
}

function draw(frame) {
  const ctx = drawCells(canvas, frame.rgba, frame.h, frame.w);
  const s = canvas.width / frame.w;
  for (let i = 0; i < frame.marks.length; i++) {
    const m = frame.marks[i];
    if (!m) continue;
    const [r, g, b] = markColour(m - 1);
    ctx.fillStyle = `rgba(${r}, ${g}, ${b}, 0.85)`;
    const row = Math.floor(i / frame.w), col = i % frame.w;
    ctx.fillRect(col * s + s * 0.3, row * s + s * 0.3, s * 0.4, s * 0.4);
  }
  drawCursor(canvas, ctx, frame.h, frame.w);
}

function show(header) {
  document.getElementById("loss-target").textContent = header.loss_target.toExponential(3);
  document.getElementById("loss-complete").textContent = header.loss_complete.toExponential(3);
  document.getElementById("alive").textContent = header.alive;
  // The switch as the server has it, once the server has seen the page's last change
  // (a frame already on its way would flip it back for a moment).
  if (header.ack !== null && header.ack >= perturbSeq) document.getElementById("perturb-on").checked = header.perturb_on;
  const target = document.getElementById("target");
  if (target.value !== header.target) target.value = header.target;
  for (const [name, k] of Object.entries(header.ks)) {
    const slider = document.getElementById(`k-${name}`);
    if (slider && document.activeElement !== slider && Number(slider.value) !== k) {
      slider.value = k;
      document.getElementById(`k-${name}-value`).textContent = k.toFixed(2);
    }
  }
  const counts = Object.entries(header.adversary_cells).map(([name, n]) => `${n} ${name}`);
  const said = counts.length ? `adversarial cells: ${counts.join(", ")}` : "";
  if (said && said !== lastSaid) announce(said);
  lastSaid = said;
  history.push([header.loss_target, header.loss_complete]);
  if (history.length > 400) history.shift();
  drawPlot();
}

let lastSaid = "";

function drawPlot() {
  const ctx = plot.getContext("2d");
  ctx.clearRect(0, 0, plot.width, plot.height);
  if (history.length < 2 || !palettes) return;
  const logs = history.flat().filter((v) => v > 0).map(Math.log10);
  const lo = Math.min(...logs) - 0.1, hi = Math.max(...logs) + 0.1;
  const y = (v) => plot.height - ((Math.log10(Math.max(v, 1e-12)) - lo) / (hi - lo)) * plot.height;
  for (const [which, idx] of [["target", 0], ["complete", 1]]) {
    ctx.strokeStyle = hexColour(palettes[paletteName][CURVE[which]]);
    ctx.setLineDash(DASH[which]);
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    history.forEach((p, i) => {
      const x = (i / 399) * plot.width;
      if (i === 0) ctx.moveTo(x, y(p[idx]));
      else ctx.lineTo(x, y(p[idx]));
    });
    ctx.stroke();
  }
  ctx.setLineDash([]);
}

function colourKey() {
  if (!palettes) return;
  document.getElementById("swatch-target").style.borderTopColor = hexColour(palettes[paletteName][CURVE.target]);
  document.getElementById("swatch-complete").style.borderTopColor = hexColour(palettes[paletteName][CURVE.complete]);
  (hello ? hello.adversaries : []).forEach((name, j) => {
    const sw = document.getElementById(`swatch-adv-${j}`);
    if (sw) sw.style.background = hexColour(markColour(j));
  });
  drawPlot();
}

// ------------------------------------------------------------------ controls
function buildSliders(msg) {
  const box = document.getElementById("sliders");
  box.replaceChildren();
  for (const name of msg.perturbations) {
    const row = document.createElement("div");
    row.className = "slider";
    const label = document.createElement("label");
    label.htmlFor = `k-${name}`;
    label.textContent = name;
    const input = document.createElement("input");
    Object.assign(input, { type: "range", id: `k-${name}`, min: msg.k_range[0], max: msg.k_range[1], step: 0.05, value: 0 });
    const out = document.createElement("span");
    out.id = `k-${name}-value`;
    out.textContent = "0.00";
    input.addEventListener("input", (ev) => {
      out.textContent = Number(input.value).toFixed(2);
      session.send({ type: "k", name, value: Number(input.value) }, ev.timeStamp);
      if (!document.getElementById("perturb-on").checked) {
        document.getElementById("perturb-on").checked = true;
        session.send({ type: "perturb", on: true });
        perturbSeq = session.seq;
      }
    });
    row.append(label, input, out);
    box.append(row);
  }
}

function buildTargets(msg) {
  const select = document.getElementById("target");
  select.replaceChildren();
  for (const name of msg.targets) {
    const opt = document.createElement("option");
    opt.value = name;
    opt.textContent = name.replace("lizard_", "").replace("lizard", "complete lizard").replace("_", " ");
    select.append(opt);
  }
  select.value = msg.target;
  select.addEventListener("change", (ev) => {
    history.length = 0;
    select.blur();
    session.send({ type: "target", name: select.value }, ev.timeStamp);
  });
}

function buildTools(msg) {
  const tools = document.getElementById("tools");
  const note = document.getElementById("adv-note");
  msg.adversaries.forEach((name, j) => {
    const b = document.createElement("button");
    b.id = `tool-adv-${name}`;
    b.setAttribute("aria-pressed", "false");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.id = `swatch-adv-${j}`;
    b.append(sw, `Paint ${name} adversary`);
    b.addEventListener("click", () => setTool(name));
    tools.append(b);
  });
  if (msg.adversaries.length) {
    const b = document.createElement("button");
    b.id = "tool-adv-none";
    b.setAttribute("aria-pressed", "false");
    b.textContent = "Erase adversaries";
    b.addEventListener("click", () => setTool("none"));
    tools.append(b);
    const said = msg.adversaries.map((name) => (msg.notes && msg.notes.adversaries ? msg.notes.adversaries[name] : null));
    note.textContent = ["Adversary brushes paint cells that run the adversary's CA.", ...said.filter(Boolean)].join(" ");
  } else {
    const b = document.createElement("button");
    b.disabled = true;
    b.textContent = "Adversary brush";
    tools.append(b);
    note.textContent =
      "No growing adversary is available: none is shipped, ../shared/reference is absent, or the server was started with --growing_adversary=none.";
  }
}

function setTool(name) {
  tool = name;
  for (const b of document.querySelectorAll("#tools button")) {
    const id = b.id.replace("tool-adv-", "").replace("tool-", "");
    b.setAttribute("aria-pressed", String(id === name));
  }
  announce(name === "cut" ? "Cut tool" : name === "none" ? "Erase adversaries tool" : `Paint ${name} adversary tool`);
}

// What each shipped matrix reaches today, beside the authors' (from the server).
function buildNotes(msg) {
  const rows = msg.notes && msg.notes.perturbations ? msg.notes.perturbations : [];
  const box = document.getElementById("attack-notes");
  box.hidden = !rows.length;
  const body = document.getElementById("notes-body");
  body.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const v of [row.name, row.ratio.toFixed(2), row.authors.toFixed(2)]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    body.append(tr);
    const slider = document.getElementById(`k-${row.name}`);
    if (slider) slider.title = `shipped ${row.ratio.toFixed(2)}, the authors' ${row.authors.toFixed(2)} (loss to the edit / to the complete lizard)`;
  }
  if (rows.length) document.getElementById("notes-runs").textContent = rows[0].runs;
}
document.getElementById("tool-cut").addEventListener("click", () => setTool("cut"));

function disc(cell, radius) {
  const out = [];
  for (let dr = -radius; dr <= radius; dr++) {
    for (let dc = -radius; dc <= radius; dc++) {
      const r = cell[0] + dr, c = cell[1] + dc;
      if (dr * dr + dc * dc <= radius * radius && r >= 0 && r < h && c >= 0 && c < w) out.push([r, c]);
    }
  }
  return out;
}

function paint(cells, ev) {
  const radius = Number(document.getElementById("brush-radius").value);
  const seen = new Map();
  for (const cell of cells) for (const [r, c] of disc(cell, radius)) seen.set(r * w + c, [r, c]);
  session.send({ type: "adversary", name: tool, cells: [...seen.values()] }, ev.timeStamp);
}

// The grid from the keyboard: Enter or Space cut (or paint) at the cursor, Delete erases
// adversaries there.
wireGridKeys(
  canvas,
  () => [h, w],
  (cell, erase, ev) => {
    if (erase) {
      session.send({ type: "adversary", name: "none", cells: disc(cell, Number(document.getElementById("brush-radius").value)) }, ev.timeStamp);
    } else if (tool === "cut") {
      const radius = Number(document.getElementById("cut-radius").value);
      session.send({ type: "cut", row: cell[0], col: cell[1], radius }, ev.timeStamp);
    } else {
      paint([cell], ev);
    }
  },
  () => lastFrame && draw(lastFrame),
);

canvas.addEventListener("pointerdown", (ev) => {
  const cell = cellAt(canvas, ev, h, w);
  if (!cell) return;
  if (tool === "cut") {
    const radius = Number(document.getElementById("cut-radius").value);
    session.send({ type: "cut", row: cell[0], col: cell[1], radius }, ev.timeStamp);
    return;
  }
  canvas.setPointerCapture(ev.pointerId);
  drawing = true;
  last = cell;
  paint([cell], ev);
});
canvas.addEventListener("pointermove", (ev) => {
  if (!drawing) return;
  const cell = cellAt(canvas, ev, h, w);
  if (!cell || (last && cell[0] === last[0] && cell[1] === last[1])) return;
  const cells = lineCells(last, cell);
  last = cell;
  paint(cells, ev);
});
for (const name of ["pointerup", "pointercancel"]) {
  canvas.addEventListener(name, () => {
    drawing = false;
    last = null;
  });
}

for (const id of ["cut-radius", "brush-radius"]) {
  const input = document.getElementById(id);
  input.addEventListener("input", () => (document.getElementById(`${id}-value`).textContent = input.value));
}
document.getElementById("perturb-on").addEventListener("change", (ev) => {
  session.send({ type: "perturb", on: ev.target.checked }, ev.timeStamp);
  perturbSeq = session.seq;
});
document.getElementById("k-zero").addEventListener("click", (ev) => {
  for (const name of hello ? hello.perturbations : []) {
    session.send({ type: "k", name, value: 0 }, ev.timeStamp);
    document.getElementById(`k-${name}`).value = 0;
    document.getElementById(`k-${name}-value`).textContent = "0.00";
  }
});
document.getElementById("reset").addEventListener("click", (ev) => {
  history.length = 0;
  session.send({ type: "reset" }, ev.timeStamp);
});
document.getElementById("remove-adv").addEventListener("click", (ev) =>
  session.send({ type: "remove_adversaries" }, ev.timeStamp),
);

session.connect();
