// Top Features in the node: the ranked table, a token strip for the text-stream rows (how strongly the
// row's feature fires on each prompt token) and the heatmap viewer for the image-stream rows. Clicking
// a row shows that row: its strip, or its map at its step.

import { HeatmapView } from "./heatmap-view.js";
import { fillTokenStrip } from "./heatmap.js";
import { createRoot } from "./style.js";

const COLUMNS = [
  ["feature", "feature", "stream:layer:index"],
  ["label", "label", "the feature atlas's label (with transcoders connected)"],
  ["step", "step", "sampling step"],
  ["token", "token", "text rows: the prompt token (position and text) this row is about"],
  ["score", "score", "image rows: mean inside the region minus mean outside (peak without a region); text rows: activation on the token"],
];

export class FeatureTableView {
  /**
   * @param {HTMLElement} container
   * @param {object} payload {rows: [{feature, label, step, token, token_label, score, ...}], region,
   *   text?: {tokens, strips: [{feature, step, values}]}, viewer? (HeatmapView's payload)}
   */
  constructor(container, payload) {
    this.rows = payload.rows;
    this.strips = new Map((payload.text?.strips ?? []).map((s) => [`${s.feature}@${s.step}`, s]));
    this.tokens = payload.text?.tokens ?? [];
    this.root = createRoot(container, "dfx-feature-table", `
      <div class="dfx-table-box"><table class="dfx-table"><thead><tr></tr></thead><tbody></tbody></table></div>
      <div class="dfx-strip-box" hidden><div class="dfx-strip-title dfx-muted"></div><div class="dfx-tokens"></div></div>
      <div class="dfx-heatmap-box"></div>`);
    this.stripBox = this.root.querySelector(".dfx-strip-box");
    this.#fillTable();
    const heatmapBox = this.root.querySelector(".dfx-heatmap-box");
    this.heatmaps = payload.viewer ? new HeatmapView(heatmapBox, payload.viewer) : null;
    if (!this.heatmaps) heatmapBox.remove();
    const firstText = this.rows.findIndex((row) => row.feature.startsWith("txt:"));
    if (firstText >= 0) this.select(firstText);
  }

  destroy() {
    this.heatmaps?.destroy();
    this.root.remove();
  }

  /** Show row `index`: a text row's token strip, or an image row's map in the heatmap viewer. */
  select(index) {
    const row = this.rows[index];
    for (const tr of this.root.querySelectorAll("tbody tr")) tr.classList.toggle("dfx-selected", Number(tr.dataset.row) === index);
    const strip = this.strips.get(`${row.feature}@${row.step}`);
    if (strip) this.#showStrip(row, strip);
    else if (this.heatmaps && row.feature.startsWith("img:")) this.heatmaps.show(row.feature, row.step);
  }

  #fillTable() {
    const doc = this.root.ownerDocument;
    const head = this.root.querySelector("thead tr");
    for (const [, title, tip] of COLUMNS) {
      const th = doc.createElement("th");
      th.textContent = title;
      th.title = tip;
      head.appendChild(th);
    }
    const body = this.root.querySelector("tbody");
    this.rows.forEach((row, index) => {
      const tr = body.insertRow();
      tr.dataset.row = String(index);
      const token = row.token === null || row.token === undefined ? "" : row.token_label ? `${row.token} “${row.token_label}”` : String(row.token);
      const cells = [row.feature, row.label ?? "", row.step, token, Number(row.score).toPrecision(3)];
      for (const value of cells) tr.insertCell().textContent = String(value);
      tr.addEventListener("click", () => this.select(index));
    });
    if (!this.rows.length) {
      const tr = body.insertRow();
      const td = tr.insertCell();
      td.colSpan = COLUMNS.length;
      td.textContent = "no feature fired on these streams, layers and steps";
    }
  }

  #showStrip(row, strip) {
    this.stripBox.hidden = false;
    const peak = fillTokenStrip(this.stripBox.querySelector(".dfx-tokens"), this.tokens, strip.values, row.token ?? -1);
    this.stripBox.querySelector(".dfx-strip-title").textContent =
      `${row.feature}${row.label ? ` (${row.label})` : ""} on each prompt token at step ${row.step} (peak ${peak.toPrecision(3)}):`;
  }
}
