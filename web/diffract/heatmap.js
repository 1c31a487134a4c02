// Token maps painted over the generated image: the same inferno ramp as diffract_core.render.heatmaps,
// one canvas pixel per image token, scaled up without smoothing.

const INFERNO = [
  [0.0015, 0.0005, 0.0139],
  [0.2582, 0.0386, 0.4065],
  [0.5783, 0.148, 0.4044],
  [0.865, 0.3168, 0.2261],
  [0.9876, 0.6453, 0.0399],
  [0.9884, 0.9984, 0.6449],
];

/** The ramp as a CSS gradient, for colour bars. */
export const HEAT_GRADIENT = `linear-gradient(to right, ${INFERNO.map((c) => `rgb(${c.map((v) => Math.round(255 * v)).join(",")})`).join(", ")})`;

/** [r, g, b] in 0..255 for a value in [0, 1]. */
export function inferno(value) {
  const position = Math.min(Math.max(value, 0), 1) * (INFERNO.length - 1);
  const low = Math.min(Math.floor(position), INFERNO.length - 2);
  const t = position - low;
  return INFERNO[low].map((c, i) => Math.round(255 * (c + (INFERNO[low + 1][i] - c) * t)));
}

/**
 * The generated image in `rect` (a grey box if there is none). Under a heat map it is drawn grey and
 * dimmed, so the ramp's reds, oranges and yellows can never be mistaken for the objects' own colours.
 */
export function drawUnderHeat(context, image, rect, heat) {
  if (!image) {
    context.fillStyle = "#333";
    context.fillRect(rect.x, rect.y, rect.width, rect.height);
    return;
  }
  context.save();
  context.imageSmoothingEnabled = image.naturalWidth >= 256;  // small images stay pixel-sharp
  if (heat) context.filter = "grayscale(1) brightness(0.55)";
  context.drawImage(image, rect.x, rect.y, rect.width, rect.height);
  context.restore();
}

/**
 * Fill `box` with one span per token, coloured by |value| / peak on the heat ramp (values[position],
 * missing = 0; `names[position]` or "#position"); the span at `highlight` gets class dfx-row-token.
 * Returns the peak |value|.
 */
export function fillTokenStrip(box, names, values, highlight = -1) {
  const doc = box.ownerDocument;
  const count = Math.max(names.length, values.length);
  let peak = 0;
  for (let i = 0; i < count; i++) peak = Math.max(peak, Math.abs(values[i] ?? 0));
  box.replaceChildren();
  for (let position = 0; position < count; position++) {
    const value = values[position] ?? 0;
    const share = peak > 0 ? Math.abs(value) / peak : 0;
    const [r, g, b] = inferno(share);
    const span = doc.createElement("span");
    span.textContent = names[position] ?? `#${position}`;
    span.style.background = share > 0 ? `rgb(${r}, ${g}, ${b})` : "transparent";
    span.style.color = share > 0.55 ? "#111" : "#ddd";
    span.title = `token ${position}: ${value.toPrecision(3)}`;
    if (position === highlight) span.classList.add("dfx-row-token");
    box.appendChild(span);
  }
  return peak;
}

/** Decode a base64 string of bytes (the nodes' quantised maps) to values in [0, 1]. */
export function decodeMap(base64) {
  const bytes = atob(base64);
  const values = new Float32Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) values[i] = bytes.charCodeAt(i) / 255;
  return values;
}

/**
 * Draw `values` (Float32Array over rows*cols tokens, row by row, in [0, 1]) on `context` over the
 * rectangle (x, y, width, height): colour by the ramp, alpha = opacity * value, as blend() does.
 */
export function paintTokenMap(context, values, grid, rect, opacity) {
  const [rows, cols] = grid;
  const small = document.createElement("canvas");
  small.width = cols;
  small.height = rows;
  const smallContext = small.getContext("2d");
  const pixels = smallContext.createImageData(cols, rows);
  for (let i = 0; i < rows * cols; i++) {
    const v = values[i] ?? 0;
    const [r, g, b] = inferno(v);
    pixels.data.set([r, g, b, Math.round(255 * opacity * Math.min(Math.max(v, 0), 1))], i * 4);
  }
  smallContext.putImageData(pixels, 0, 0);
  context.save();
  context.imageSmoothingEnabled = false;
  context.drawImage(small, rect.x, rect.y, rect.width, rect.height);
  context.restore();
}

/** A node's activations spread over the image grid, scaled to [0, 1] by their largest magnitude. */
export function nodeTokenMap(node, tokens) {
  const values = new Float32Array(tokens);
  let peak = 0;
  for (let p = 0; p < node.positions.length; p++) peak = Math.max(peak, Math.abs(node.activations[p]));
  if (peak === 0) return values;
  for (let p = 0; p < node.positions.length; p++) {
    if (node.positions[p] < tokens) values[node.positions[p]] = Math.abs(node.activations[p]) / peak;
  }
  return values;
}

/** Load an image URL (or data: URI); resolves to the HTMLImageElement, or null if it fails. */
export function loadImage(url) {
  return new Promise((resolve) => {
    if (!url) return resolve(null);
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => resolve(null);
    image.src = url;
  });
}

/** The largest rectangle of the image's aspect ratio centred in (width, height). */
export function fitRect(imageWidth, imageHeight, width, height) {
  const scale = Math.min(width / imageWidth, height / imageHeight);
  const w = imageWidth * scale;
  const h = imageHeight * scale;
  return { x: (width - w) / 2, y: (height - h) / 2, width: w, height: h };
}
