// The interactive circuit: graph on a canvas (fixed layout, edges by |attribution| and sign), the
// generated image with the hovered feature's heatmap and the region tool, and the details of a node.
// Used by the Trace Circuit widget, the large view in ComfyUI and the standalone report alike.

import { collapseGroups, describeNode, featureCard, featureSpec, foldedGroups, influence, labelGroups, layout, nodeLabel, nodesInRegion, prune, restoreViewState, supernodes, withDescendants } from "./circuit-model.js";
import { drawUnderHeat, fillTokenStrip, fitRect, HEAT_GRADIENT, loadImage, nodeTokenMap, paintTokenMap } from "./heatmap.js";
import { createRoot } from "./style.js";

const KIND_COLOURS = { feature: "#9aa3b5", error: "#8a8a8a", rest: "#b8b8b8", input: "#2fa36b", bias: "#a8a23a", target: "#f0a020" };
const GROUP_COLOUR = "#c77dff";
const SUPERNODE_COLOUR = "#4fc3d9";
const POSITIVE = [46, 110, 220];
const NEGATIVE = [215, 60, 50];
const WIDTH_LEVELS = 6;
const RESIDUAL_KINDS = new Set(["bias", "error", "rest"]);  // what no feature explains: drawn faint by default
const PAD = { left: 58, right: 18, top: 34, bottom: 18 };  // room for the axes and the outermost labels
const LABEL_WIDTH = 170;  // longer labels are cut with "…" (the details panel has them whole)

export class CircuitView {
  /**
   * @param {HTMLElement} container
   * @param {object} options circuit (from parseCircuit), imageUrl, state (saved view state),
   *   stateKeptIn (where onStateChange keeps the state, said next to the label box),
   *   onStateChange(state), onSteer({features, step, nodes}), onOpenLarge() (compact views only)
   */
  constructor(container, options) {
    this.circuit = options.circuit;
    this.options = options;
    this.state = restoreViewState(this.circuit, options.state);
    this.influence = influence(this.circuit);
    this.supernodes = supernodes(this.circuit);
    this.hovered = -1;
    this.focused = -1;
    this.zoom = 1;
    this.pan = { x: 0, y: 0 };
    this.image = null;
    this.tool = "box";
    this.redraws = [];
    this.root = this.#build(container);
    this.#recompute();
    // true once the image is drawn, false if there is none or it failed to load (tests await it)
    this.imageReady = loadImage(options.imageUrl).then((image) => {
      this.image = image;
      this.#drawImage();
      return image !== null;
    });
    this.resizeObserver = new ResizeObserver(() => this.redraw());
    this.resizeObserver.observe(this.graphBox);
    this.resizeObserver.observe(this.imageBox);
  }

  destroy() {
    this.resizeObserver.disconnect();
    this.root.remove();
  }

  // --- state changes (each one saves) -------------------------------------------------------------

  setThresholds(nodeThreshold, edgeThreshold) {
    this.state.nodeThreshold = nodeThreshold;
    this.state.edgeThreshold = edgeThreshold;
    this.#recompute();
    this.#changed();
  }

  setShowResidual(show) {
    this.state.showResidual = Boolean(show);
    this.#bucketEdges();
    this.#changed();
    this.redraw();
  }

  togglePin(index) {
    const id = this.circuit.nodes[index].id;
    const pins = this.state.pins;
    const at = pins.indexOf(id);
    if (at >= 0) pins.splice(at, 1);
    else pins.push(id);
    this.#changed();
    this.redraw();
  }

  /** Group the pinned nodes (two or more) into one supernode; they stay pinned. */
  groupPinned(name) {
    const members = this.state.pins.filter((id) => !this.state.groups.some((g) => g.members.includes(id)));
    if (members.length < 2) {
      this.#say("pin two or more nodes (Ctrl/Cmd-click) before grouping them");
      return false;
    }
    this.state.groups.push({ name: name || `group ${this.state.groups.length + 1}`, members });
    this.#recompute();
    this.#changed();
    return true;
  }

  /** Fold the drawn features that share a label (the user's, else the atlas's) into one supernode per label. */
  groupByLabel() {
    const groups = labelGroups(this.circuit, this.nodeMask, this.state.labels, this.state.groups);
    if (!groups.length) {
      this.#say("no two drawn features share a label");
      return false;
    }
    this.state.groups.push(...groups);
    this.#recompute();
    this.#changed();
    return true;
  }

  /** Draw a folded supernode's members (its inner supernodes folded) instead of the one node. */
  unfold(id) {
    if (!this.state.expanded.includes(id)) this.state.expanded.push(id);
    this.#refolded();
  }

  /** Draw a supernode (and everything inside it) as one node again. */
  fold(id) {
    const inside = withDescendants(this.supernodes, id);
    this.state.expanded = this.state.expanded.filter((open) => !inside.has(open));
    this.#refolded();
  }

  /** After a fold or unfold: the node under the pointer may now stand for another group. */
  #refolded() {
    this.#recompute();
    if (this.hovered >= 0 && !this.drawn[this.hovered]) this.hovered = -1;
    this.#changed();
    this.#showDetails(this.focused >= 0 ? this.focused : this.hovered);
    this.#drawImage();
  }

  ungroup(groupIndex) {
    this.state.groups.splice(groupIndex, 1);
    this.#recompute();
    this.#changed();
  }

  setLabel(index, text) {
    const id = this.circuit.nodes[index].id;
    if (text.trim()) this.state.labels[id] = text.trim().slice(0, 200);
    else delete this.state.labels[id];
    this.#changed();
    this.redraw();
  }

  /** Filter to nodes active on these image tokens (null: no filter). */
  setRegion(cells) {
    this.state.region = cells && cells.length ? { cells: [...cells].sort((a, b) => a - b) } : null;
    this.#recompute();
    this.#changed();
  }

  focus(index) {
    this.focused = index;
    this.#showDetails(index);
    this.redraw();
  }

  hover(index) {
    if (this.hovered === index) return;
    this.hovered = index;
    this.#drawImage();
    if (this.focused < 0) this.#showDetails(index);
    this.redraw();
  }

  steer(index) {
    const members = this.#members(index).map((i) => this.circuit.nodes[i]).filter((n) => n.kind === "feature");
    if (!members.length) return;
    const request = { features: members.map(featureSpec), step: members[0].step, nodes: members.map((n) => n.id) };
    this.options.onSteer?.(request);
  }

  #changed() {
    this.options.onStateChange?.(structuredClone(this.state));
    this.#showPins();
  }

  // --- derived graph --------------------------------------------------------------------------------

  #recompute() {
    const { nodeMask, edgeMask } = prune(this.circuit, this.state.nodeThreshold, this.state.edgeThreshold);
    if (this.state.region) {
      const cells = new Uint8Array(this.#tokenCount());
      for (const c of this.state.region.cells) if (c < cells.length) cells[c] = 1;
      const keep = nodesInRegion(this.circuit, cells);
      for (let i = 0; i < nodeMask.length; i++) nodeMask[i] &= keep[i];
    }
    for (const id of this.state.pins) nodeMask[this.circuit.byId.get(id)] = 1;
    const { source, target } = this.circuit.edges;
    for (let e = 0; e < edgeMask.length; e++) edgeMask[e] &= nodeMask[source[e]] & nodeMask[target[e]];
    this.nodeMask = nodeMask;
    const folded = foldedGroups(this.supernodes, this.state.expanded);
    const taken = new Set(folded.flatMap((g) => g.members));  // a folded supernode wins over the user's groups
    this.groups = [...folded, ...this.state.groups.map((g) => ({ ...g, members: g.members.filter((id) => !taken.has(id)) }))];
    const collapsed = collapseGroups(this.circuit, this.groups, nodeMask, edgeMask);
    this.representative = collapsed.representative;
    this.groupOf = collapsed.groupOf;
    this.drawnEdges = collapsed.edges;
    const drawnVisible = new Uint8Array(nodeMask.length);
    for (let i = 0; i < nodeMask.length; i++) if (nodeMask[i] && this.representative[i] === i) drawnVisible[i] = 1;
    this.drawn = drawnVisible;
    this.positions = layout(this.circuit, drawnVisible);
    this.#bucketEdges();
    const kept = nodeMask.reduce((a, b) => a + b, 0);
    let keptEdges = 0;
    for (const k of edgeMask) keptEdges += k;
    this.counts = { nodes: kept, edges: keptEdges, drawnEdges: this.drawnEdges.weight.length };
    const preservation = this.circuit.metadata.preservation;
    this.countsText.textContent = `${kept} of ${this.circuit.nodes.length} nodes · ${keptEdges} of ${edgeMask.length} edges`
      + (this.state.region ? ` · region: ${this.state.region.cells.length} tokens` : "")
      + (preservation ? ` · preservation ${(100 * preservation.score).toFixed(1)} % with ${preservation.features} of ${preservation.traced_features} features` : "");
    if (this.focused >= 0 && !this.drawn[this.focused]) this.focused = -1;
    this.redraw();
    this.#showPins();
  }

  /**
   * Edges sorted into (sign, width) buckets, each stroked as one path: strong edges drawn last. Widths
   * scale to the strongest feature edge, so a large bias or error fan does not thin out the rest; unless
   * showResidual, edges from bias, error and rest nodes go to their own faint buckets.
   */
  #bucketEdges() {
    const { source, weight } = this.drawnEdges;
    const residual = (e) => RESIDUAL_KINDS.has(this.circuit.nodes[source[e]].kind);
    let peak = 0;
    for (let e = 0; e < weight.length; e++) if (!residual(e)) peak = Math.max(peak, Math.abs(weight[e]));
    if (peak === 0) for (const w of weight) peak = Math.max(peak, Math.abs(w));
    const buckets = Array.from({ length: 4 * WIDTH_LEVELS }, () => []);
    for (let e = 0; e < weight.length; e++) {
      const strength = peak > 0 ? Math.min(1, Math.abs(weight[e]) / peak) : 0;
      const level = Math.min(WIDTH_LEVELS - 1, Math.floor(Math.sqrt(strength) * WIDTH_LEVELS));
      const faint = residual(e) && !this.state.showResidual ? 0 : 2 * WIDTH_LEVELS;  // faint buckets are drawn first
      buckets[faint + (weight[e] < 0 ? WIDTH_LEVELS : 0) + level].push(e);
    }
    this.buckets = buckets.map((edges) => Int32Array.from(edges));
  }

  #members(index) {
    const group = this.groupOf.get(index);
    if (group === undefined) return [index];
    return this.groups[group].members.map((id) => this.circuit.byId.get(id)).filter((i) => this.nodeMask[i]);
  }

  #tokenCount() {
    const grid = this.circuit.metadata.image_grid;
    return grid ? grid[0] * grid[1] : this.circuit.metadata.image_tokens ?? 0;
  }

  // --- DOM --------------------------------------------------------------------------------------------

  #build(container) {
    const root = createRoot(container, "dfx-circuit", `
      <div class="dfx-toolbar">
        <label title="share of influence the kept nodes hold">nodes <input type="range" class="dfx-node-threshold" min="0.3" max="1" step="0.005"><span class="dfx-node-value"></span></label>
        <label title="share of edge influence the kept edges hold">edges <input type="range" class="dfx-edge-threshold" min="0.5" max="1" step="0.001"><span class="dfx-edge-value"></span></label>
        <button data-action="group" title="group the pinned nodes into a supernode (G)">group pins</button>
        <button data-action="group-labels" title="fold the features that share a label into one supernode per label">group by label</button>
        <span>region: <button data-tool="box" aria-pressed="true">box</button><button data-tool="paint" aria-pressed="false">paint</button><button data-action="clear-region">clear</button></span>
        <label title="draw the edges from bias, error and rest nodes (what no feature explains) at full strength"><input type="checkbox" class="dfx-residual">bias/error edges</label>
        <button data-action="fit" title="reset zoom and pan">fit</button>
        ${this.options.onOpenLarge ? '<button data-action="open-large" class="dfx-primary" title="the same circuit in ComfyUI\'s bottom panel, full width">⤢ open large view</button>' : ""}
        <span class="dfx-counts dfx-muted"></span>
        <details class="dfx-legend"${this.options.onOpenLarge ? "" : " open"}><summary>legend</summary>
          <div><i class="dfx-line" style="background:rgb(${POSITIVE})"></i>+ raises the node it feeds <i class="dfx-line" style="background:rgb(${NEGATIVE})"></i>− lowers it (width: |attribution|)</div>
          <div>${this.#legendNodes()}</div>
          <div class="dfx-muted">node size: influence on the target; rows: layers; columns: step and stream</div>
        </details>
      </div>
      <div class="dfx-body">
        <div class="dfx-graph" tabindex="0"><canvas class="dfx-graph-canvas"></canvas></div>
        <div class="dfx-side">
          <div class="dfx-image"><canvas class="dfx-image-canvas"></canvas></div>
          <div class="dfx-colourbar" hidden><span class="dfx-colourbar-title"></span><i style="background:${HEAT_GRADIENT}"></i><span class="dfx-muted">0</span><span class="dfx-colourbar-peak dfx-muted"></span></div>
          <div class="dfx-details"><p class="dfx-muted">Hover a node for its details and heatmap; click to focus its inputs and outputs; Ctrl/Cmd-click to pin; G groups the pins. Drag a box or paint on the image to keep only the features active there.</p></div>
          <div class="dfx-pins"></div>
        </div>
      </div>`);
    const find = (selector) => root.querySelector(selector);
    this.graphBox = find(".dfx-graph");
    this.canvas = find(".dfx-graph-canvas");
    this.imageBox = find(".dfx-image");
    this.imageCanvas = find(".dfx-image-canvas");
    this.details = find(".dfx-details");
    this.pinsBox = find(".dfx-pins");
    this.countsText = find(".dfx-counts");
    this.colourBar = find(".dfx-colourbar");
    const residual = find(".dfx-residual");
    residual.checked = this.state.showResidual;
    residual.addEventListener("change", () => this.setShowResidual(residual.checked));
    const nodeSlider = find(".dfx-node-threshold");
    const edgeSlider = find(".dfx-edge-threshold");
    nodeSlider.value = this.state.nodeThreshold;
    edgeSlider.value = this.state.edgeThreshold;
    const showValues = () => {
      find(".dfx-node-value").textContent = Number(nodeSlider.value).toFixed(3);
      find(".dfx-edge-value").textContent = Number(edgeSlider.value).toFixed(3);
    };
    showValues();
    const onSlide = () => {
      showValues();
      this.setThresholds(Number(nodeSlider.value), Number(edgeSlider.value));
    };
    nodeSlider.addEventListener("change", onSlide);
    edgeSlider.addEventListener("change", onSlide);
    nodeSlider.addEventListener("input", showValues);
    edgeSlider.addEventListener("input", showValues);
    root.querySelector('[data-action="group"]').addEventListener("click", () => this.groupPinned());
    root.querySelector('[data-action="group-labels"]').addEventListener("click", () => this.groupByLabel());
    root.querySelector('[data-action="clear-region"]').addEventListener("click", () => this.setRegion(null));
    root.querySelector('[data-action="fit"]').addEventListener("click", () => {
      this.zoom = 1;
      this.pan = { x: 0, y: 0 };
      this.redraw();
    });
    root.querySelector('[data-action="open-large"]')?.addEventListener("click", () => this.options.onOpenLarge());
    for (const button of root.querySelectorAll("[data-tool]")) {
      button.addEventListener("click", () => {
        this.tool = button.dataset.tool;
        for (const b of root.querySelectorAll("[data-tool]")) b.setAttribute("aria-pressed", String(b === button));
      });
    }
    this.#wireGraphEvents();
    this.#wireImageEvents();
    return root;
  }

  #legendNodes() {
    const kinds = [["feature", "feature", "●"], ["error", "error / rest", "■"], ["input", "input token", "●"], ["bias", "bias", "●"],
      ["target", "target", "●"]];
    const items = kinds.map(([kind, name, mark]) => `<span style="color:${KIND_COLOURS[kind]}">${mark}</span> ${name}`);
    items.push(`<span style="color:${GROUP_COLOUR}">■</span> group`, '<span style="color:#ffd400">○</span> pinned');
    if (this.supernodes.length) items.push(`<span style="color:${SUPERNODE_COLOUR}">■</span> supernode (click to unfold)`);
    return items.join(" &nbsp;");
  }

  #wireGraphEvents() {
    const canvas = this.canvas;
    let drag = null;
    canvas.addEventListener("pointerdown", (event) => {
      this.graphBox.focus({ preventScroll: true });
      drag = { x: event.clientX, y: event.clientY, panX: this.pan.x, panY: this.pan.y, moved: false };
      canvas.setPointerCapture(event.pointerId);
    });
    canvas.addEventListener("pointermove", (event) => {
      const point = this.#canvasPoint(event);
      if (drag) {
        const dx = event.clientX - drag.x;
        const dy = event.clientY - drag.y;
        if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
        if (drag.moved) {
          this.pan = { x: drag.panX + dx, y: drag.panY + dy };
          this.redraw();
          return;
        }
      }
      this.hover(this.#nodeAt(point));
    });
    canvas.addEventListener("pointerup", (event) => {
      const wasDrag = drag?.moved;
      drag = null;
      if (wasDrag) return;
      const index = this.#nodeAt(this.#canvasPoint(event));
      if (index < 0) return this.focus(-1);
      if (event.ctrlKey || event.metaKey) return this.togglePin(index);
      const supernode = this.groups[this.groupOf.get(index)]?.supernode;
      if (supernode) return this.unfold(supernode);
      this.focus(index === this.focused ? -1 : index);
    });
    canvas.addEventListener("pointerleave", () => this.hover(-1));
    canvas.addEventListener("dblclick", (event) => {
      const index = this.#nodeAt(this.#canvasPoint(event));
      if (index >= 0) {
        this.focus(index);
        this.details.querySelector("input.dfx-label")?.focus();
      }
    });
    canvas.addEventListener("wheel", (event) => {
      event.preventDefault();
      event.stopPropagation();
      const point = this.#canvasPoint(event);
      const factor = Math.exp(-event.deltaY * 0.0015);
      this.zoomAt(point.x, point.y, factor);
    }, { passive: false });
    this.graphBox.addEventListener("keydown", (event) => {
      if (event.target !== this.graphBox) return;
      if (event.key === "g" || event.key === "G") {
        this.groupPinned();
      } else if (event.key === "Escape") {
        this.focus(-1);
      } else {
        return;
      }
      event.preventDefault();
      event.stopPropagation();
    });
  }

  /** Where a drawn node is, in client (page viewport) coordinates; null if it is not drawn. */
  clientPoint(index) {
    if (!this.drawn[index]) return null;
    const { sx, sy, ox, oy } = this.#screen();
    const box = this.canvas.getBoundingClientRect();
    return { x: box.left + ox + this.positions.x[index] * sx, y: box.top + oy + this.positions.y[index] * sy };
  }

  zoomAt(x, y, factor) {
    const zoom = Math.min(Math.max(this.zoom * factor, 0.2), 60);
    const applied = zoom / this.zoom;
    this.pan = { x: x - PAD.left - (x - PAD.left - this.pan.x) * applied, y: y - PAD.top - (y - PAD.top - this.pan.y) * applied };
    this.zoom = zoom;
    this.redraw();
  }

  #wireImageEvents() {
    const canvas = this.imageCanvas;
    let painting = null;
    const cellAt = (event) => {
      const grid = this.circuit.metadata.image_grid;
      if (!grid || !this.imageRect) return null;
      const box = canvas.getBoundingClientRect();
      const x = (event.clientX - box.left - this.imageRect.x) / this.imageRect.width;
      const y = (event.clientY - box.top - this.imageRect.y) / this.imageRect.height;
      return { col: Math.min(Math.max(Math.floor(x * grid[1]), 0), grid[1] - 1), row: Math.min(Math.max(Math.floor(y * grid[0]), 0), grid[0] - 1) };
    };
    canvas.addEventListener("pointerdown", (event) => {
      const cell = cellAt(event);
      if (!cell) return;
      canvas.setPointerCapture(event.pointerId);
      painting = { start: cell, end: cell, cells: new Set() };
      this.#paintCell(painting, cell);
      this.#drawImage(painting);
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!painting) return;
      const cell = cellAt(event);
      painting.end = cell;
      this.#paintCell(painting, cell);
      this.#drawImage(painting);
    });
    canvas.addEventListener("pointerup", () => {
      if (!painting) return;
      const cells = this.#selectionCells(painting);
      painting = null;
      this.setRegion(cells);
      this.#drawImage();
    });
  }

  #paintCell(painting, cell) {
    if (this.tool !== "paint" || !cell) return;
    const cols = this.circuit.metadata.image_grid[1];
    const rows = this.circuit.metadata.image_grid[0];
    const radius = Math.max(0, Math.round(Math.min(rows, cols) / 24));
    for (let r = cell.row - radius; r <= cell.row + radius; r++) {
      for (let c = cell.col - radius; c <= cell.col + radius; c++) {
        if (r >= 0 && r < rows && c >= 0 && c < cols) painting.cells.add(r * cols + c);
      }
    }
  }

  #selectionCells(painting) {
    if (this.tool === "paint") return [...painting.cells];
    const cols = this.circuit.metadata.image_grid[1];
    const cells = [];
    const [r0, r1] = [painting.start.row, painting.end.row].sort((a, b) => a - b);
    const [c0, c1] = [painting.start.col, painting.end.col].sort((a, b) => a - b);
    for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) cells.push(r * cols + c);
    return cells;
  }

  #showDetails(index) {
    const box = this.details;
    box.replaceChildren();
    if (index < 0) return;
    const node = this.circuit.nodes[index];
    const members = this.#members(index);
    const doc = box.ownerDocument;
    const title = doc.createElement("h4");
    const group = this.groupOf.get(index);
    title.textContent = group === undefined ? describeNode(node) : `${this.groups[group].name}: ${members.length} nodes`;
    box.appendChild(title);
    const rows = [["kind", node.kind], ["step", node.step], ["stream", node.stream ?? "–"], ["layer", node.layer ?? "–"],
      ["feature", node.feature ?? "–"], ["value", node.value.toPrecision(4)], ["influence", this.influence[index].toPrecision(3)],
      ["active tokens", node.positions.length]];
    const table = doc.createElement("table");
    for (const [key, value] of rows) {
      const tr = table.insertRow();
      tr.insertCell().textContent = key;
      tr.insertCell().textContent = String(value);
    }
    box.appendChild(table);
    const card = featureCard(this.circuit, node);
    if (card) box.appendChild(this.#card(card));
    const label = doc.createElement("input");
    label.className = "dfx-label";
    const keptIn = this.options.stateKeptIn ?? "kept while this page is open";
    label.placeholder = card && card.describes ? `${card.label} (your label wins; ${keptIn})` : `your label (${keptIn})`;
    label.value = this.state.labels[node.id] ?? "";
    label.addEventListener("change", () => this.setLabel(index, label.value));
    label.addEventListener("keydown", (event) => event.stopPropagation());
    box.appendChild(label);
    if (node.stream === "txt" && node.kind !== "bias") box.appendChild(this.#tokenStrip(node));
    box.appendChild(this.#neighbours(index));
    const actions = doc.createElement("div");
    const pin = doc.createElement("button");
    pin.textContent = this.state.pins.includes(node.id) ? "unpin" : "pin";
    pin.addEventListener("click", () => {
      this.togglePin(index);
      this.#showDetails(index);
    });
    actions.appendChild(pin);
    const open = this.#innermostUnfolded(node.id);
    if (open) {
      const fold = doc.createElement("button");
      fold.className = "dfx-fold";
      fold.textContent = `fold ${open.name}`;
      fold.addEventListener("click", () => this.fold(open.id));
      actions.appendChild(fold);
    }
    if (members.some((i) => this.circuit.nodes[i].kind === "feature")) {
      const steer = doc.createElement("button");
      steer.className = "dfx-steer";
      steer.textContent = members.length > 1 ? "steer these features" : "steer this feature";
      steer.addEventListener("click", () => this.steer(index));
      actions.appendChild(steer);
    }
    box.appendChild(actions);
  }

  /** A feature's atlas label and top examples: image crops, or a text feature's words in context. */
  #card(card) {
    const doc = this.details.ownerDocument;
    const box = doc.createElement("div");
    box.className = "dfx-card";
    const title = doc.createElement("div");
    title.className = "dfx-auto-label";
    title.textContent = `${card.label} (atlas, confidence ${card.confidence.toFixed(2)})`;
    box.appendChild(title);
    const crops = doc.createElement("div");
    crops.className = "dfx-crops";
    for (const example of card.examples) {
      const caption = `${example.prompt} · step ${example.step} · ${example.activation.toPrecision(3)}`;
      if (example.crop) {
        const image = doc.createElement("img");
        image.src = example.crop;
        image.alt = image.title = caption;
        image.width = image.height = 48;
        image.style.imageRendering = "pixelated";
        crops.appendChild(image);
      } else if (example.context) {
        const line = doc.createElement("div");
        line.className = "dfx-muted dfx-example";
        line.textContent = `“${example.token}” in “${example.context}” (${example.prompt})`;
        box.appendChild(line);
      }
    }
    if (crops.childElementCount) box.appendChild(crops);
    return box;
  }

  #tokenStrip(node) {
    const strip = this.details.ownerDocument.createElement("div");
    strip.className = "dfx-tokens";
    const tokens = this.circuit.metadata.text_tokens ?? [];
    const values = new Array(tokens.length).fill(0);
    for (let p = 0; p < node.positions.length; p++) values[node.positions[p]] = node.activations[p];
    fillTokenStrip(strip, tokens, values);
    return strip;
  }

  /** The strongest drawn inputs and outputs of a node. */
  #neighbours(index) {
    const doc = this.details.ownerDocument;
    const list = doc.createElement("div");
    const { source, target, weight } = this.drawnEdges;
    const inputs = [];
    const outputs = [];
    for (let e = 0; e < weight.length; e++) {
      if (target[e] === index) inputs.push([source[e], weight[e]]);
      if (source[e] === index) outputs.push([target[e], weight[e]]);
    }
    for (const [name, items] of [["inputs", inputs], ["outputs", outputs]]) {
      items.sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
      const line = doc.createElement("div");
      line.className = "dfx-muted";
      line.textContent = `${name}: ` + (items.slice(0, 5).map(([i, w]) => `${this.#name(i)} (${w >= 0 ? "+" : ""}${w.toPrecision(2)})`).join(", ") || "none");
      list.appendChild(line);
    }
    return list;
  }

  /** The finest unfolded supernode holding the node `id`, or null. */
  #innermostUnfolded(id) {
    const open = this.supernodes.filter((s) => this.state.expanded.includes(s.id) && s.members.includes(id));
    return open.length ? open.reduce((a, b) => (b.level < a.level ? b : a)) : null;
  }

  #name(index) {
    const group = this.groupOf.get(index);
    if (group !== undefined) return this.groups[group].name;
    const node = this.circuit.nodes[index];
    return nodeLabel(this.circuit, node, this.state.labels) || (node.kind === "feature" ? featureSpec(node) : describeNode(node));
  }

  #showPins() {
    const box = this.pinsBox;
    box.replaceChildren();
    const doc = box.ownerDocument;
    for (const supernode of this.supernodes.filter((s) => this.state.expanded.includes(s.id))) {
      const line = doc.createElement("div");
      line.textContent = `▾ ${supernode.name} `;
      const fold = doc.createElement("button");
      fold.textContent = "fold";
      fold.addEventListener("click", () => this.fold(supernode.id));
      line.appendChild(fold);
      box.appendChild(line);
    }
    this.state.groups.forEach((group, g) => {
      const line = doc.createElement("div");
      line.textContent = `▣ ${group.name} (${group.members.length}) `;
      const ungroup = doc.createElement("button");
      ungroup.textContent = "ungroup";
      ungroup.addEventListener("click", () => this.ungroup(g));
      line.appendChild(ungroup);
      box.appendChild(line);
    });
    if (this.state.pins.length) {
      const line = doc.createElement("div");
      line.className = "dfx-muted";
      line.textContent = "pinned: " + this.state.pins.map((id) => this.#name(this.circuit.byId.get(id))).join(", ");
      box.appendChild(line);
    }
  }

  #say(text) {
    this.details.replaceChildren();
    const p = this.details.ownerDocument.createElement("p");
    p.textContent = text;
    this.details.appendChild(p);
  }

  // --- drawing ----------------------------------------------------------------------------------------

  #canvasPoint(event) {
    const box = this.canvas.getBoundingClientRect();
    return { x: event.clientX - box.left, y: event.clientY - box.top };
  }

  #screen() {
    const width = this.canvas.clientWidth;
    const height = this.canvas.clientHeight;
    const sx = Math.max(1, width - PAD.left - PAD.right) * this.zoom;
    const sy = Math.max(1, height - PAD.top - PAD.bottom) * this.zoom;
    return { width, height, sx, sy, ox: PAD.left + this.pan.x, oy: PAD.top + this.pan.y };
  }

  #nodeAt(point) {
    const { sx, sy, ox, oy } = this.#screen();
    const { x, y } = this.positions;
    let best = -1;
    let bestDistance = 10 * 10;
    for (let i = 0; i < x.length; i++) {
      if (!this.drawn[i]) continue;
      const dx = ox + x[i] * sx - point.x;
      const dy = oy + y[i] * sy - point.y;
      const d = dx * dx + dy * dy;
      if (d < bestDistance) {
        bestDistance = d;
        best = i;
      }
    }
    return best;
  }

  redraw() {
    if (this.frame) return;
    const request = this.canvas.ownerDocument.defaultView.requestAnimationFrame;
    this.frame = request(() => {
      this.frame = null;
      this.drawNow();
    });
  }

  /** Draw the graph at once; returns the milliseconds it took (also kept in `redraws`). */
  drawNow() {
    const started = performance.now();
    const canvas = this.canvas;
    const ratio = canvas.ownerDocument.defaultView.devicePixelRatio || 1;
    const { width, height, sx, sy, ox, oy } = this.#screen();
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);
    const { x, y } = this.positions;
    const { source, target } = this.drawnEdges;
    const focus = this.focused;
    const incident = focus >= 0 ? new Set([focus]) : null;
    if (incident) for (let e = 0; e < source.length; e++) {
      if (source[e] === focus) incident.add(target[e]);
      if (target[e] === focus) incident.add(source[e]);
    }
    this.#drawGridLines(context, { width, sy, oy });
    context.lineCap = "round";
    this.buckets.forEach((edges, b) => {
      if (!edges.length) return;
      const faint = b < 2 * WIDTH_LEVELS;
      const negative = b % (2 * WIDTH_LEVELS) >= WIDTH_LEVELS;
      const level = (b % WIDTH_LEVELS + 1) / WIDTH_LEVELS;
      const [r, g, bl] = negative ? NEGATIVE : POSITIVE;
      for (const highlighted of incident ? [false, true] : [false]) {
        context.beginPath();
        let any = false;
        for (const e of edges) {
          if (incident && (source[e] === focus || target[e] === focus) !== highlighted) continue;
          const x0 = ox + x[source[e]] * sx;
          const y0 = oy + y[source[e]] * sy;
          const x1 = ox + x[target[e]] * sx;
          const y1 = oy + y[target[e]] * sy;
          if ((x0 < 0 && x1 < 0) || (x0 > width && x1 > width) || (y0 < 0 && y1 < 0) || (y0 > height && y1 > height)) continue;
          context.moveTo(x0, y0);
          context.lineTo(x1, y1);
          any = true;
        }
        if (!any) continue;
        const alpha = incident && !highlighted ? 0.06 : faint ? 0.04 + 0.1 * level : 0.15 + 0.85 * level;
        context.strokeStyle = `rgba(${r},${g},${bl},${alpha})`;
        context.lineWidth = faint ? 0.4 + level : (0.4 + 4 * level * level) * (highlighted ? 1.5 : 1);
        context.stroke();
      }
    });
    this.#drawNodes(context, { width, height, sx, sy, ox, oy }, incident);
    this.#drawAxisLabels(context, { width, height, sx, sy, ox, oy });
    const took = performance.now() - started;
    this.redraws.push(took);
    if (this.redraws.length > 200) this.redraws.shift();
    return took;
  }

  #drawGridLines(context, { width, sy, oy }) {
    context.strokeStyle = "rgba(255,255,255,0.07)";
    context.lineWidth = 1;
    for (const row of this.positions.rows) {
      const py = Math.round(oy + row.y * sy) + 0.5;
      context.beginPath();
      context.moveTo(PAD.left - 4, py);
      context.lineTo(width, py);
      context.stroke();
    }
  }

  /** Row labels (inputs, layers, target) down the left edge and column labels (step, stream) along the top. */
  #drawAxisLabels(context, { width, height, sx, sy, ox, oy }) {
    const { rows, columns } = this.positions;
    context.fillStyle = "#1e1f22";
    context.fillRect(0, 0, PAD.left - 6, height);
    context.fillRect(0, 0, width, 16);
    context.font = "10px system-ui, sans-serif";
    context.textBaseline = "middle";
    context.fillStyle = "#9aa0aa";
    context.textAlign = "right";
    for (const row of rows) context.fillText(row.label, PAD.left - 8, oy + row.y * sy);
    context.textAlign = "center";
    let lastRight = -Infinity;
    for (const column of columns) {
      const px = ox + column.x * sx;
      const half = context.measureText(column.label).width / 2;
      if (px - half < lastRight + 6 || px + half < 0 || px - half > width) continue;
      context.fillText(column.label, px, 8);
      lastRight = px + half;
    }
    context.textAlign = "left";
    context.textBaseline = "alphabetic";
  }

  #drawNodes(context, { width, height, sx, sy, ox, oy }, incident) {
    const { x, y } = this.positions;
    const pins = new Set(this.state.pins.map((id) => this.circuit.byId.get(id)));
    const labelled = [];
    const strongest = this.#strongest(24);
    const byColour = new Map();
    for (let i = 0; i < x.length; i++) {
      if (!this.drawn[i]) continue;
      const px = ox + x[i] * sx;
      const py = oy + y[i] * sy;
      if (px < -20 || px > width + 20 || py < -20 || py > height + 20) continue;
      const node = this.circuit.nodes[i];
      const grouped = this.groupOf.has(i);
      const dim = incident && !incident.has(i);
      const colour = grouped ? (this.groups[this.groupOf.get(i)].supernode ? SUPERNODE_COLOUR : GROUP_COLOUR) : KIND_COLOURS[node.kind];
      const key = `${colour}|${dim}`;
      if (!byColour.has(key)) byColour.set(key, []);
      byColour.get(key).push(i);
      const special = pins.has(i) || grouped || i === this.hovered || i === this.focused || this.state.labels[node.id];
      if (special || node.kind === "target" || (strongest.has(i) && this.zoom * sx > 500)) labelled.push(i);
    }
    for (const [key, members] of byColour) {
      const [colour, dim] = key.split("|");
      context.fillStyle = colour;
      context.globalAlpha = dim === "true" ? 0.25 : 1;
      context.beginPath();
      for (const i of members) {
        const r = this.#radius(i);
        const px = ox + x[i] * sx;
        const py = oy + y[i] * sy;
        if (this.groupOf.has(i) || this.circuit.nodes[i].kind === "error" || this.circuit.nodes[i].kind === "rest") {
          context.rect(px - r, py - r, 2 * r, 2 * r);
        } else {
          context.moveTo(px + r, py);
          context.arc(px, py, r, 0, 2 * Math.PI);
        }
      }
      context.fill();
    }
    context.globalAlpha = 1;
    context.lineWidth = 2;
    for (const i of pins) {
      if (i === undefined || !this.drawn[i]) continue;
      context.strokeStyle = "#ffd400";
      context.beginPath();
      context.arc(ox + x[i] * sx, oy + y[i] * sy, this.#radius(i) + 3, 0, 2 * Math.PI);
      context.stroke();
    }
    for (const i of [this.hovered, this.focused]) {
      if (i < 0 || !this.drawn[i]) continue;
      context.strokeStyle = "#ffffff";
      context.beginPath();
      context.arc(ox + x[i] * sx, oy + y[i] * sy, this.#radius(i) + 5, 0, 2 * Math.PI);
      context.stroke();
    }
    this.#drawLabels(context, labelled, { width, height, sx, sy, ox, oy }, pins);
  }

  /**
   * Labels never overlap one another nor leave the canvas: each tries right of its node, left, above and
   * below, kept inside the canvas. Pinned, grouped, hovered, focused and user-labelled nodes are placed
   * first (the hovered one before all); a label with no free place is left out, and the details panel
   * names the node in full.
   */
  #drawLabels(context, labelled, { width, height, sx, sy, ox, oy }, pins) {
    const { x, y } = this.positions;
    const must = (i) => pins.has(i) || this.groupOf.has(i) || i === this.hovered || i === this.focused || this.state.labels[this.circuit.nodes[i].id];
    const rank = (i) => (i === this.hovered ? 2 : must(i) ? 1 : 0);
    labelled.sort((a, b) => rank(b) - rank(a) || this.influence[b] - this.influence[a]);
    context.font = "11px system-ui, sans-serif";
    const placed = [];
    const free = (box) => !placed.some((p) => box.left < p.right && p.left < box.right && box.top < p.bottom && p.top < box.bottom);
    const lineHeight = 14;
    for (const i of labelled) {
      const node = this.circuit.nodes[i];
      const name = this.#name(i);
      const spec = node.kind === "feature" && !this.groupOf.has(i) ? featureSpec(node) : null;
      const text = this.#fit(context, i === this.hovered && spec && name !== spec ? `${name} · ${spec}` : name, Math.min(LABEL_WIDTH, width - 8));
      const textWidth = context.measureText(text).width;
      const px = ox + x[i] * sx;
      const py = oy + y[i] * sy;
      const r = this.#radius(i) + 3;
      const candidates = [[px + r, py - lineHeight / 2], [px - r - textWidth, py - lineHeight / 2],
        [px - textWidth / 2, py - r - lineHeight], [px - textWidth / 2, py + r]];
      const box = candidates
        .map(([left, top]) => {
          const l = Math.min(Math.max(left, PAD.left - 4), width - textWidth - 2);
          const t = Math.min(Math.max(top, 0), height - lineHeight);
          return { left: l, right: l + textWidth, top: t, bottom: t + lineHeight };
        })
        .find(free);
      if (!box) continue;
      placed.push(box);
      context.fillStyle = "rgba(30,31,34,0.75)";
      context.fillRect(box.left - 1, box.top, textWidth + 2, lineHeight);
      context.fillStyle = i === this.hovered ? "#fff" : "#e6e6e6";
      context.fillText(text, box.left, box.bottom - 3);
    }
  }

  /** `text` cut with "…" to at most `limit` pixels wide. */
  #fit(context, text, limit) {
    if (context.measureText(text).width <= limit) return text;
    let low = 0;
    let high = text.length;
    while (low < high) {
      const middle = Math.ceil((low + high) / 2);
      if (context.measureText(`${text.slice(0, middle)}…`).width <= limit) low = middle;
      else high = middle - 1;
    }
    return `${text.slice(0, low)}…`;
  }

  #strongest(count) {
    if (!this.strongestCache || this.strongestCache.mask !== this.drawn) {
      const ranked = [];
      for (let i = 0; i < this.drawn.length; i++) if (this.drawn[i] && this.circuit.nodes[i].kind === "feature") ranked.push(i);
      ranked.sort((a, b) => this.influence[b] - this.influence[a]);
      this.strongestCache = { mask: this.drawn, set: new Set(ranked.slice(0, count)) };
    }
    return this.strongestCache.set;
  }

  #radius(i) {
    const influence = this.groupOf.has(i) ? this.#members(i).reduce((sum, m) => sum + this.influence[m], 0) : this.influence[i];
    const r = 2.5 + 7 * Math.sqrt(Math.min(1, influence));
    return this.groupOf.has(i) ? r + 3 : r;
  }

  /** The heat scale under the image: from 0 to the largest |activation| of the node shown (-1: hide it). */
  #showColourBar(index) {
    this.colourBar.hidden = index < 0;
    if (index < 0) return;
    let peak = 0;
    for (const i of this.#members(index)) for (const a of this.circuit.nodes[i].activations) peak = Math.max(peak, Math.abs(a));
    this.colourBar.querySelector(".dfx-colourbar-title").textContent = `|activation| of ${this.#name(index)}:`;
    this.colourBar.querySelector(".dfx-colourbar-peak").textContent = peak.toPrecision(3);
  }

  #drawImage(painting = null) {
    const canvas = this.imageCanvas;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    const ratio = canvas.ownerDocument.defaultView.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);
    const grid = this.circuit.metadata.image_grid;
    const aspect = this.image ? [this.image.naturalWidth, this.image.naturalHeight] : grid ? [grid[1], grid[0]] : [1, 1];
    const rect = fitRect(aspect[0], aspect[1], width, height);
    this.imageRect = rect;
    const shown = this.hovered >= 0 ? this.hovered : this.focused;
    const heat = grid && shown >= 0 && this.circuit.nodes[shown].stream === "img" && this.circuit.nodes[shown].kind !== "bias";
    drawUnderHeat(context, this.image, rect, heat);
    this.#showColourBar(heat ? shown : -1);
    if (!grid) return;
    if (heat) {
      const members = this.#members(shown).map((i) => this.circuit.nodes[i]);
      const values = new Float32Array(grid[0] * grid[1]);
      for (const member of members) nodeTokenMap(member, values.length).forEach((v, t) => { values[t] = Math.max(values[t], v); });
      paintTokenMap(context, values, grid, rect, 0.85);
    }
    const cells = painting ? this.#selectionCells(painting) : this.state.region?.cells ?? [];
    if (cells.length) {
      context.strokeStyle = "#00e5ff";
      context.lineWidth = 1;
      const cw = rect.width / grid[1];
      const ch = rect.height / grid[0];
      for (const c of cells) context.strokeRect(rect.x + (c % grid[1]) * cw + 0.5, rect.y + Math.floor(c / grid[1]) * ch + 0.5, cw - 1, ch - 1);
    }
  }
}
