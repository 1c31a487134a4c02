// The heatmap viewer of Feature Heatmaps and Top Features: the generated image under one feature's
// map at one step, with a feature picker, a step slider and the overlay's opacity.

import { decodeMap, drawUnderHeat, fitRect, HEAT_GRADIENT, loadImage, paintTokenMap } from "./heatmap.js";
import { createRoot } from "./style.js";

export class HeatmapView {
  /**
   * @param {HTMLElement} container
   * @param {object} payload {grid: [rows, cols], image (URL or null), opacity, maps: [{feature, step, sigma,
   *   data (base64 bytes, row by row)}], labels?: {feature: its atlas label}}
   */
  constructor(container, payload) {
    this.grid = payload.grid;
    this.maps = payload.maps.map((m) => ({ ...m, values: decodeMap(m.data) }));
    this.features = [...new Set(this.maps.map((m) => m.feature))];
    this.labels = payload.labels ?? {};
    this.steps = [...new Set(this.maps.map((m) => m.step))].sort((a, b) => a - b);
    this.feature = this.features[0];
    this.step = this.steps[0];
    this.opacity = payload.opacity ?? 0.6;
    this.image = null;
    this.root = this.#build(container);
    loadImage(payload.image).then((image) => {
      this.image = image;
      this.draw();
    });
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(this.canvas);
    this.draw();
  }

  destroy() {
    this.resizeObserver.disconnect();
    this.root.remove();
  }

  show(feature, step) {
    this.feature = feature ?? this.feature;
    this.step = step ?? this.step;
    this.picker.value = this.feature;
    this.slider.value = String(this.steps.indexOf(this.step));
    this.draw();
  }

  current() {
    return this.maps.find((m) => m.feature === this.feature && m.step === this.step) ?? null;
  }

  #build(container) {
    const doc = container.ownerDocument;
    const root = createRoot(container, "dfx-heatmap", `
      <div class="dfx-toolbar">
        <label>feature <select class="dfx-feature"></select></label>
        <label>step <input type="range" class="dfx-step" min="0" step="1"><span class="dfx-step-value"></span></label>
        <label>opacity <input type="range" class="dfx-opacity" min="0" max="1" step="0.01"></label>
      </div>
      <div class="dfx-image"><canvas></canvas></div>`);
    this.canvas = root.querySelector("canvas");
    this.picker = root.querySelector(".dfx-feature");
    for (const feature of this.features) {
      const option = doc.createElement("option");
      option.value = feature;
      const label = this.labels[feature];
      option.textContent = label ? `${feature} (${label})` : feature;
      this.picker.appendChild(option);
    }
    this.slider = root.querySelector(".dfx-step");
    this.slider.max = String(this.steps.length - 1);
    this.slider.value = "0";
    const opacity = root.querySelector(".dfx-opacity");
    opacity.value = String(this.opacity);
    this.picker.addEventListener("change", () => {
      this.feature = this.picker.value;
      const steps = this.maps.filter((m) => m.feature === this.feature).map((m) => m.step);
      if (!steps.includes(this.step)) this.step = steps[0];
      this.show();
    });
    this.slider.addEventListener("input", () => {
      this.step = this.steps[Number(this.slider.value)];
      this.draw();
    });
    opacity.addEventListener("input", () => {
      this.opacity = Number(opacity.value);
      this.draw();
    });
    return root;
  }

  draw() {
    const canvas = this.canvas;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    const map = this.current();
    this.root.querySelector(".dfx-step-value").textContent = map
      ? `${this.step}${map.sigma === undefined ? "" : ` (σ ${Number(map.sigma).toFixed(3)})`}`
      : `${this.step} (not recorded for this feature)`;
    if (!width || !height) return;
    const ratio = canvas.ownerDocument.defaultView.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    const aspect = this.image ? [this.image.naturalWidth, this.image.naturalHeight] : [this.grid[1], this.grid[0]];
    const rect = fitRect(aspect[0], aspect[1], width, height);
    drawUnderHeat(context, this.image, rect, Boolean(map) && this.opacity > 0);
    if (map) paintTokenMap(context, map.values, this.grid, rect, this.opacity);
  }
}
