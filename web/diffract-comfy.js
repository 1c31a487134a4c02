// The ComfyUI side of the viewers: a circuit widget in Trace Circuit and Simplify Circuit (plus a large
// view in the bottom panel), the heatmap viewer in Feature Heatmaps, the table (with token strips and
// heatmaps) in Top Features, and the "steer" action. The view state (thresholds, pins, groups,
// labels, region, unfolded supernodes) lives in the node's properties, so it is saved with the
// workflow; the circuit itself is fetched from the server and never written into the workflow.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { parseCircuit } from "./diffract/circuit-model.js";
import { CircuitView } from "./diffract/circuit-view.js";
import { FeatureTableView } from "./diffract/feature-table.js";
import { HeatmapView } from "./diffract/heatmap-view.js";

const TRACE = "DiffractTraceCircuit";
const CIRCUIT_NODES = new Set([TRACE, "DiffractSimplifyCircuit"]);  // nodes whose widget draws their CIRCUIT
// The viewer each node carries, the height it needs (the example workflows leave room for these) and
// the key of the node's ui output it shows.
const VIEWER_WIDGETS = {
  [TRACE]: { name: "circuit_view", height: 560, output: "diffract_circuit" },
  DiffractSimplifyCircuit: { name: "circuit_view", height: 560, output: "diffract_circuit" },
  DiffractFeatureHeatmaps: { name: "heatmap_view", height: 320, output: "diffract_heatmaps" },
  DiffractTopFeatures: { name: "feature_table", height: 440, output: "diffract_top_features" },
};
const STATE = "diffract_view";
const LAST_CIRCUIT = "diffract_circuit_url";
const LARGE_TAB = "diffract-circuit";

const large = { element: null, node: null, view: null };

function viewUrl(ref) {
  if (!ref) return null;
  const query = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder ?? "", type: ref.type ?? "temp" });
  return api.apiURL(`/view?${query}`);
}

function addViewerWidget(node, name, height) {
  const element = document.createElement("div");
  element.style.height = "100%";
  element.style.minHeight = `${height}px`;  // the Vue renderer sizes widgets by their CSS
  element.textContent = "Run the workflow to see the viewer here.";
  const widget = node.addDOMWidget(name, "DIFFRACT_VIEWER", element, {
    serialize: false,  // keeps it out of the API prompt
    hideOnZoom: false,
    getMinHeight: () => height,
  });
  widget.serialize = false;  // keeps it out of widgets_values
  return widget;
}

// --- Trace Circuit ------------------------------------------------------------------------------------

async function showCircuit(node, payload) {
  if (!payload?.url || node.diffractShown === payload.id) return;
  node.diffractShown = payload.id;
  const response = await api.fetchApi(payload.url);
  const element = node.diffractWidget.element;
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    element.textContent = body.error ?? `the circuit could not be fetched (HTTP ${response.status}): run Trace Circuit again`;
    return;
  }
  node.diffractCircuit = { circuit: parseCircuit(await response.json()), imageUrl: viewUrl(payload.image) };
  node.properties[LAST_CIRCUIT] = payload.url;
  node.properties[`${LAST_CIRCUIT}_image`] = payload.image ?? null;
  mountCircuit(node, element, true);
  if (large.node === node) mountLarge(node);
}

function mountCircuit(node, element, compact) {
  const key = compact ? "diffractView" : "diffractLargeView";
  node[key]?.destroy();
  element.replaceChildren();
  node[key] = new CircuitView(element, {
    circuit: node.diffractCircuit.circuit,
    imageUrl: node.diffractCircuit.imageUrl,
    state: node.properties[STATE],
    stateKeptIn: "saved with the workflow",
    onStateChange: (state) => {
      node.properties[STATE] = state;
      app.graph.setDirtyCanvas(true, false);
      const other = compact ? node.diffractLargeView : node.diffractView;
      if (other) mountCircuit(node, other.root.parentElement, !compact);
    },
    onSteer: (request) => addSteerNode(node, request),
    onOpenLarge: compact ? () => openLarge(node) : undefined,
  });
  return node[key];
}

function openLarge(node) {
  large.node = node;
  const manager = app.extensionManager;
  if (manager?.bottomPanel?.activeBottomPanelTab?.id === LARGE_TAB && large.element) mountLarge(node);
  else manager?.command?.execute(`Workspace.ToggleBottomPanelTab.${LARGE_TAB}`);
}

function mountLarge(node) {
  if (!large.element || !node?.diffractCircuit) return;
  large.view = mountCircuit(node, large.element, false);
}

/** A Steer Feature node prefilled with the feature(s), wired to the model and transcoders Trace Circuit uses. */
function addSteerNode(traceNode, request) {
  const graph = traceNode.graph ?? app.canvas.graph;
  const steer = LiteGraph.createNode("DiffractSteerFeature");
  if (!steer) throw new Error("Steer Feature is not registered: is the DifFRACT pack loaded?");
  steer.pos = [traceNode.pos[0] + traceNode.size[0] + 40, traceNode.pos[1]];
  graph.add(steer);
  const set = (name, value) => {
    const widget = steer.widgets?.find((w) => w.name === name);
    if (widget) widget.value = value;
  };
  set("features", request.features.join(", "));
  set("mode", "scale");
  set("strength", 0);
  for (const name of ["model", "transcoders"]) {
    const slot = traceNode.inputs?.findIndex((i) => i.name === name) ?? -1;
    const link = slot >= 0 ? traceNode.getInputLink(slot) : null;  // newer frontends deprecate reading input.link
    if (!link) continue;
    const origin = graph.getNodeById(link.origin_id);
    origin?.connect(link.origin_slot, steer, steer.inputs.findIndex((i) => i.name === name));
  }
  graph.setDirtyCanvas(true, true);
  return steer;
}

// --- heatmap viewers --------------------------------------------------------------------------------

function showHeatmaps(node, payload) {
  if (!payload) return;
  const element = node.diffractWidget.element;
  node.diffractView?.destroy();
  node.diffractView = null;
  element.replaceChildren();
  const viewer = payload.viewer ? { ...payload.viewer, image: payload.viewer.image ?? viewUrl(payload.image) } : null;
  if (node.comfyClass === "DiffractTopFeatures") {
    node.diffractView = new FeatureTableView(element, { ...payload, viewer });
  } else if (viewer) {
    node.diffractView = new HeatmapView(element, viewer);
  } else {
    element.textContent = "No image-stream feature among these features: heatmaps are drawn for image features (streams img).";
  }
}

// --- outputs, from either renderer ----------------------------------------------------------------

function handleOutput(node, output) {
  const viewer = VIEWER_WIDGETS[node.comfyClass];
  if (!output || !node.diffractWidget || !viewer) return;
  const payload = output[viewer.output]?.[0];
  if (CIRCUIT_NODES.has(node.comfyClass)) showCircuit(node, payload);
  else showHeatmaps(node, payload);
}

app.registerExtension({
  name: "diffract.viewers",
  bottomPanelTabs: [
    {
      id: LARGE_TAB,
      title: "DifFRACT circuit",
      type: "custom",
      render(element) {
        large.element = element;
        element.replaceChildren();
        element.style.height = "100%";
        if (large.node?.diffractCircuit) mountLarge(large.node);
        else element.textContent = "Press \"large view\" in a Trace Circuit node after it has run.";
      },
      destroy() {
        large.node?.diffractLargeView?.destroy();
        if (large.node) large.node.diffractLargeView = null;
        large.element = null;
      },
    },
  ],
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const viewer = VIEWER_WIDGETS[nodeData.name];
    if (!viewer) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.diffractWidget = addViewerWidget(this, viewer.name, viewer.height);
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      handleOutput(this, output);
    };
    if (CIRCUIT_NODES.has(nodeData.name)) {
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        const result = onConfigure?.apply(this, arguments);
        const url = this.properties?.[LAST_CIRCUIT];
        // The server keeps recent circuits in memory: reopen the last one if it is still there.
        if (url) showCircuit(this, { id: url, url, image: this.properties[`${LAST_CIRCUIT}_image`] }).catch(() => {});
        return result;
      };
    }
  },
  // Newer frontends (and the Vue "Nodes 2.0" renderer) hand restored outputs over here.
  onNodeOutputsUpdated(outputs) {
    for (const [locator, output] of Object.entries(outputs ?? {})) {
      const id = String(locator).split(":").pop();
      const node = app.graph?.getNodeById(Number(id)) ?? app.graph?.getNodeById(id);
      if (node) handleOutput(node, output);
    }
  },
});
