// Mounting the viewers in a standalone page (the demo's report.html): the data comes from the page's
// <script id="diffract-data"> element, the view state lives in the page's localStorage.

import { parseCircuit } from "./circuit-model.js";
import { CircuitView } from "./circuit-view.js";
import { HeatmapView } from "./heatmap-view.js";

/** Mount a viewer in every element with data-diffract-view="circuit" | "heatmaps"; returns them. */
export function mountStandalone(doc) {
  const data = JSON.parse(doc.getElementById("diffract-data").textContent);
  const views = [];
  for (const element of doc.querySelectorAll("[data-diffract-view]")) {
    const kind = element.dataset.diffractView;
    if (kind === "circuit" && data.circuit) views.push(mountCircuit(doc, element, data.circuit, data.viewer?.image));
    if (kind === "heatmaps" && data.heatmaps) views.push(new HeatmapView(element, data.heatmaps));
  }
  doc.defaultView.diffract = { views, data };
  return views;
}

function mountCircuit(doc, element, graph, imageUrl) {
  const circuit = parseCircuit(graph);
  const key = `diffract-view:${circuit.nodes[circuit.targetIndex].id}:${circuit.nodes.length}:${circuit.edges.weight.length}`;
  const storage = doc.defaultView.localStorage;
  let saved = null;
  try {
    saved = JSON.parse(storage.getItem(key) ?? "null");
  } catch {
    saved = null;
  }
  const note = doc.createElement("p");
  note.className = "dfx-steer-note";
  const view = new CircuitView(element, {
    circuit,
    imageUrl,
    state: saved,
    stateKeptIn: "kept in this browser's storage for this report",
    onStateChange: (state) => storage.setItem(key, JSON.stringify(state)),
    onSteer: (request) => {
      note.textContent = `To steer ${request.features.join(", ")}: in ComfyUI, a Steer Feature node with features = `
        + `"${request.features.join(", ")}" (or Steer Circuit with nodes = "${request.nodes.join(", ")}"); from Python, `
        + `diffract_core.recording.SteeringSpec with these features.`;
    },
  });
  element.after(note);
  return view;
}
