// The circuit as the viewer computes with it: typed arrays, influence and pruning exactly as
// diffract_core.attribution.graph does them (so the prune slider shows what Trace Circuit would
// keep), the fixed layout, supernodes (the user's groups and a simplified circuit's foldable hierarchy)
// and the image-region filter. No DOM here.

const ALWAYS_KEPT = new Set(["target", "input", "bias"]);
const NEEDS_OUTPUT = new Set(["feature", "error", "rest"]);

/** The graph JSON of `graph_to_dict` (format "diffract-circuit") as typed arrays, duplicate edges merged;
 * `features` (from diffract_core.viewer.circuit_payload, optional): spec -> {label, confidence, examples}. */
export function parseCircuit(data) {
  if (!data || data.format !== "diffract-circuit") {
    throw new Error("not a DifFRACT circuit: expected the JSON that Trace Circuit or Save Circuit writes");
  }
  const nodes = data.nodes.map((raw, index) => ({
    index,
    id: raw.id,
    kind: raw.kind,
    step: raw.step,
    stream: raw.stream ?? null,
    layer: raw.layer ?? null,
    feature: raw.feature ?? null,
    value: raw.value ?? 0,
    positions: Int32Array.from(raw.positions ?? []),
    activations: Float32Array.from(raw.activations ?? []),
    label: raw.label ?? "",
  }));
  const merged = new Map();
  const { source, target, weight } = data.edges;
  for (let e = 0; e < source.length; e++) {
    const key = target[e] * nodes.length + source[e];
    merged.set(key, (merged.get(key) ?? 0) + weight[e]);
  }
  const count = merged.size;
  const edges = { source: new Int32Array(count), target: new Int32Array(count), weight: new Float64Array(count) };
  let e = 0;
  for (const [key, w] of merged) {
    edges.target[e] = Math.floor(key / nodes.length);
    edges.source[e] = key % nodes.length;
    edges.weight[e] = w;
    e++;
  }
  const targetIndex = nodes.findIndex((n) => n.kind === "target");
  const byId = new Map(nodes.map((n) => [n.id, n.index]));
  return { nodes, edges, metadata: data.metadata ?? {}, targetIndex, byId, features: data.features ?? {} };
}

export function featureSpec(node) {
  return node.feature === null ? null : `${node.stream}:${node.layer}:${node.feature}`;
}

/** A feature's atlas card (label, confidence, top examples), or null. */
export function featureCard(circuit, node) {
  const spec = featureSpec(node);
  return spec === null ? null : circuit.features[spec] ?? null;
}

/** What a node is called: a label the user gave it in the viewer (`userLabels`, by node id), else its
 * own (the target's, or one saved in the file), else its atlas label unless that is "unclear"; "" if none. */
export function nodeLabel(circuit, node, userLabels) {
  const card = featureCard(circuit, node);
  return userLabels[node.id] || node.label || (card && card.describes ? card.label : "");
}

/** Supernodes of the feature nodes in `nodeMask` that share a label (two or more each), leaving out
 * nodes already in one of `groups`: [{name: label, members: [node ids]}]. */
export function labelGroups(circuit, nodeMask, userLabels, groups) {
  const taken = new Set(groups.flatMap((g) => g.members));
  const byLabel = new Map();
  for (const node of circuit.nodes) {
    if (node.kind !== "feature" || !nodeMask[node.index] || taken.has(node.id)) continue;
    const label = nodeLabel(circuit, node, userLabels);
    if (!label) continue;
    if (!byLabel.has(label)) byLabel.set(label, []);
    byLabel.get(label).push(node.id);
  }
  return [...byLabel].filter(([, members]) => members.length > 1).map(([name, members]) => ({ name, members }));
}

/** The supernodes of a simplified circuit (metadata.supernodes, coarsest first), members kept to the
 * circuit's nodes: [{id, name, level, parent, members: [node ids]}]. */
export function supernodes(circuit) {
  const raw = circuit.metadata.supernodes;
  if (!Array.isArray(raw)) return [];
  return raw
    .filter((s) => s && typeof s.id === "string" && Array.isArray(s.members))
    .map((s) => ({ id: s.id, name: String(s.name ?? s.id), level: Number(s.level) || 1,
      parent: typeof s.parent === "string" ? s.parent : null, members: s.members.filter((id) => circuit.byId.has(id)) }))
    .filter((s) => s.members.length > 1);
}

/** The supernodes drawn folded, as collapseGroups takes groups (each with its `supernode` id): those
 * not in `expanded` whose every ancestor is. */
export function foldedGroups(nodes, expanded) {
  const byId = new Map(nodes.map((s) => [s.id, s]));
  const open = new Set(expanded);
  const shown = (s) => {
    for (let p = s.parent, hops = 0; p !== null && byId.has(p) && hops <= nodes.length; p = byId.get(p).parent, hops++) {
      if (!open.has(p)) return false;
    }
    return true;
  };
  return nodes.filter((s) => !open.has(s.id) && shown(s)).map((s) => ({ name: s.name, members: s.members, supernode: s.id }));
}

/** `id` and every supernode inside it. */
export function withDescendants(nodes, id) {
  const found = new Set([id]);
  for (let grew = true; grew;) {
    grew = false;
    for (const s of nodes) if (s.parent !== null && found.has(s.parent) && !found.has(s.id)) { found.add(s.id); grew = true; }
  }
  return found;
}

export function describeNode(node) {
  switch (node.kind) {
    case "feature": return `${featureSpec(node)} (step ${node.step})`;
    case "target": return `target ${node.label || featureSpec(node)}`;
    case "error": return `${node.stream} L${node.layer} error`;
    case "rest": return `${node.stream} L${node.layer} other features`;
    case "input": return `${node.stream} input`;
    default: return "biases";
  }
}

/** |w| / (row sum of |w|) per edge, rows being edge targets, over the edges in `edgeMask` (all if null). */
function normalizedWeights(circuit, edgeMask) {
  const { source, target, weight } = circuit.edges;
  const rowSum = new Float64Array(circuit.nodes.length);
  for (let e = 0; e < weight.length; e++) if (!edgeMask || edgeMask[e]) rowSum[target[e]] += Math.abs(weight[e]);
  const normalized = new Float64Array(weight.length);
  for (let e = 0; e < weight.length; e++) {
    if (!edgeMask || edgeMask[e]) normalized[e] = Math.abs(weight[e]) / Math.max(rowSum[target[e]], 1e-10);
  }
  return normalized;
}

/** Every node's summed influence over all paths to the target (weights · (A + A² + ...)). */
function propagate(circuit, normalized, weights) {
  const { source, target } = circuit.edges;
  const n = circuit.nodes.length;
  const influence = new Float64Array(n);
  let current = weights;
  for (let iteration = 0; iteration < 1000; iteration++) {
    const next = new Float64Array(n);
    let any = false;
    for (let e = 0; e < normalized.length; e++) {
      const flow = current[target[e]] * normalized[e];
      if (flow !== 0) {
        next[source[e]] += flow;
        any = true;
      }
    }
    if (!any) return influence;
    for (let i = 0; i < n; i++) influence[i] += next[i];
    current = next;
  }
  throw new Error("influence did not converge: the circuit has a cycle");
}

function targetWeights(circuit) {
  const weights = new Float64Array(circuit.nodes.length);
  weights[circuit.targetIndex] = 1;
  return weights;
}

export function influence(circuit) {
  const result = propagate(circuit, normalizedWeights(circuit, null), targetWeights(circuit));
  result[circuit.targetIndex] = 1;
  return result;
}

/** The smallest score among the largest ones that together hold `threshold` of the total. `extraZeros`
 * counts scores of 0 not listed (a dense matrix's empty cells), as torch.searchsorted would see them. */
function findThreshold(scores, threshold, extraZeros = 0) {
  const ordered = Float64Array.from(scores).sort().reverse();
  const size = ordered.length + extraZeros;
  if (size === 0) return 0;
  let total = 0;
  for (const s of ordered) total += s;
  if (total <= 0) return ordered.length ? ordered[0] : 0;
  let cumulative = 0;
  for (let i = 0; i < ordered.length; i++) {
    cumulative += ordered[i];
    if (cumulative / total >= threshold) return ordered[i];
  }
  return extraZeros > 0 ? 0 : ordered[ordered.length - 1];
}

/** circuit-tracer's pruning, as CircuitGraph.prune: returns {nodeMask, edgeMask} (Uint8Array). */
export function prune(circuit, nodeThreshold, edgeThreshold) {
  const { nodes } = circuit;
  const { source, target, weight } = circuit.edges;
  const n = nodes.length;
  const weights = targetWeights(circuit);
  const full = propagate(circuit, normalizedWeights(circuit, null), weights);
  const nodeCut = findThreshold(full, nodeThreshold);
  const nodeMask = new Uint8Array(n);
  for (let i = 0; i < n; i++) nodeMask[i] = full[i] >= nodeCut || ALWAYS_KEPT.has(nodes[i].kind) ? 1 : 0;

  const inside = new Uint8Array(weight.length);
  for (let e = 0; e < weight.length; e++) inside[e] = nodeMask[source[e]] && nodeMask[target[e]] && weight[e] !== 0 ? 1 : 0;
  const normalized = normalizedWeights(circuit, inside);
  const prunedInfluence = propagate(circuit, normalized, weights);
  const scores = new Float64Array(weight.length);
  for (let e = 0; e < weight.length; e++) scores[e] = normalized[e] * (prunedInfluence[target[e]] + weights[target[e]]);
  const edgeCut = findThreshold(scores, edgeThreshold, n * n - weight.length);
  const keep = new Uint8Array(weight.length);
  for (let e = 0; e < weight.length; e++) keep[e] = inside[e] && scores[e] >= edgeCut ? 1 : 0;

  for (;;) {
    let changed = false;
    const hasOut = new Uint8Array(n);
    const hasIn = new Uint8Array(n);
    for (let e = 0; e < keep.length; e++) {
      if (keep[e] && !(nodeMask[source[e]] && nodeMask[target[e]])) keep[e] = 0;
      if (keep[e]) {
        hasOut[source[e]] = 1;
        hasIn[target[e]] = 1;
      }
    }
    for (let i = 0; i < n; i++) {
      const kind = nodes[i].kind;
      if (!nodeMask[i] || ALWAYS_KEPT.has(kind)) continue;
      if ((NEEDS_OUTPUT.has(kind) && !hasOut[i]) || (kind === "feature" && !hasIn[i])) {
        nodeMask[i] = 0;
        changed = true;
      }
    }
    if (!changed) break;
  }
  return { nodeMask, edgeMask: keep };
}

/** Which nodes to keep for a region: image-stream nodes active (activation != 0) on a token of `cells`
 * (Uint8Array over the image grid, row by row), the text features that feed one of them directly,
 * and every node that is not a feature. Returns a Uint8Array mask. */
export function nodesInRegion(circuit, cells) {
  const { nodes } = circuit;
  const inRegion = new Uint8Array(nodes.length);
  for (const node of nodes) {
    if (node.stream !== "img" || node.kind === "input") continue;
    for (let p = 0; p < node.positions.length; p++) {
      const position = node.positions[p];
      if (position < cells.length && cells[position] && node.activations[p] !== 0) {
        inRegion[node.index] = 1;
        break;
      }
    }
  }
  const { source, target } = circuit.edges;
  const fed = new Uint8Array(nodes.length);
  for (let e = 0; e < source.length; e++) {
    if (inRegion[target[e]] && nodes[source[e]].stream === "txt") fed[source[e]] = 1;
  }
  const keep = new Uint8Array(nodes.length);
  for (const node of nodes) {
    const structural = node.kind !== "feature";
    keep[node.index] = inRegion[node.index] || fed[node.index] || structural ? 1 : 0;
  }
  return keep;
}

/**
 * Fixed positions in [0, 1]²: y by layer (inputs and biases at the bottom, the target on top), x by
 * (step, stream) columns — text left of image within a step — and, inside a column, by where the node
 * fires (token position). Only nodes with visible[i] take part; returns Float32Array x and y (NaN elsewhere)
 * and the axes: rows [{y, label}] (inputs, each layer, target) and columns [{x, label}] (step and stream).
 */
export function layout(circuit, visible) {
  const { nodes } = circuit;
  const layers = [...new Set(nodes.filter((n) => n.layer !== null && n.kind !== "target").map((n) => n.layer))].sort((a, b) => a - b);
  const rowOf = new Map(layers.map((layer, i) => [layer, i + 1]));
  const topRow = layers.length + 1;
  const row = (node) => (node.kind === "input" || node.kind === "bias" ? 0 : node.kind === "target" ? topRow : rowOf.get(node.layer));
  const steps = [...new Set(nodes.map((n) => n.step))].sort((a, b) => a - b);
  const columns = [];
  for (const step of steps) for (const stream of ["txt", "img"]) columns.push(`${step}:${stream}`);
  const columnOf = (node) => columns.indexOf(`${node.step}:${node.stream ?? "img"}`);

  const cells = new Map();
  for (const node of nodes) {
    if (!visible[node.index]) continue;
    const key = `${row(node)}|${columnOf(node)}`;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(node);
  }
  const x = new Float32Array(nodes.length).fill(NaN);
  const y = new Float32Array(nodes.length).fill(NaN);
  const gutter = 0.04;
  const width = (1 - gutter * (columns.length - 1)) / columns.length;
  const rowLabels = [{ y: 1, label: "inputs" }, ...layers.map((layer, i) => ({ y: 1 - (i + 1) / topRow, label: `layer ${layer}` })),
    { y: 0, label: "target" }];
  const columnLabels = columns.map((key, c) => {
    const [step, stream] = key.split(":");
    return { x: c * (width + gutter) + width / 2, label: `step ${step} · ${stream === "txt" ? "text" : "image"}` };
  });
  for (const [key, members] of cells) {
    const [r, c] = key.split("|").map(Number);
    members.sort((a, b) => centre(a) - centre(b) || (a.feature ?? -1) - (b.feature ?? -1) || a.index - b.index);
    const left = c * (width + gutter);
    members.forEach((node, i) => {
      x[node.index] = left + (width * (i + 0.5)) / members.length;
      y[node.index] = 1 - r / topRow;
    });
  }
  return { x, y, rows: rowLabels, columns: columnLabels };
}

/** Activation-weighted mean token position: neighbours on the image sit near each other. */
function centre(node) {
  let total = 0;
  let weighted = 0;
  for (let p = 0; p < node.positions.length; p++) {
    const a = Math.abs(node.activations[p]);
    total += a;
    weighted += a * node.positions[p];
  }
  return total > 0 ? weighted / total : 0;
}

/**
 * The graph as drawn: members of a supernode collapse into one node (the first member stands for it)
 * and edges between drawn nodes are summed. `groups`: [{name, members: [node ids]}].
 * Returns {representative: Int32Array (node -> drawn node), edges: {source, target, weight}, groupOf}.
 */
export function collapseGroups(circuit, groups, nodeMask, edgeMask) {
  const n = circuit.nodes.length;
  const representative = new Int32Array(n);
  for (let i = 0; i < n; i++) representative[i] = i;
  const groupOf = new Map();
  groups.forEach((group, g) => {
    const members = group.members.map((id) => circuit.byId.get(id)).filter((i) => i !== undefined && nodeMask[i]);
    if (!members.length) return;
    for (const i of members) {
      representative[i] = members[0];
      groupOf.set(i, g);
    }
  });
  const { source, target, weight } = circuit.edges;
  const sums = new Map();
  for (let e = 0; e < weight.length; e++) {
    if (!edgeMask[e]) continue;
    const s = representative[source[e]];
    const t = representative[target[e]];
    if (s === t) continue;
    const key = t * n + s;
    sums.set(key, (sums.get(key) ?? 0) + weight[e]);
  }
  const count = sums.size;
  const drawn = { source: new Int32Array(count), target: new Int32Array(count), weight: new Float64Array(count) };
  let e = 0;
  for (const [key, w] of sums) {
    drawn.target[e] = Math.floor(key / n);
    drawn.source[e] = key % n;
    drawn.weight[e] = w;
    e++;
  }
  return { representative, edges: drawn, groupOf };
}

/** The state a view saves (workflow node properties in ComfyUI, the page's storage in a report). */
export function defaultViewState(circuit) {
  const pruning = circuit.metadata.pruning ?? {};
  return {
    nodeThreshold: pruning.node_threshold ?? 0.8,
    edgeThreshold: pruning.edge_threshold ?? 0.98,
    showResidual: false,
    pins: [],
    groups: [],
    labels: {},
    region: null,
    expanded: [],  // supernodes unfolded (the others draw as one node each)
  };
}

/** A saved state made safe to use: unknown or malformed parts fall back to the defaults. */
export function restoreViewState(circuit, saved) {
  const state = defaultViewState(circuit);
  if (!saved || typeof saved !== "object") return state;
  const unit = (v, fallback) => (typeof v === "number" && v >= 0 && v <= 1 ? v : fallback);
  state.nodeThreshold = unit(saved.nodeThreshold, state.nodeThreshold);
  state.edgeThreshold = unit(saved.edgeThreshold, state.edgeThreshold);
  if (typeof saved.showResidual === "boolean") state.showResidual = saved.showResidual;
  const known = (id) => typeof id === "string" && circuit.byId.has(id);
  if (Array.isArray(saved.pins)) state.pins = saved.pins.filter(known);
  if (Array.isArray(saved.groups)) {
    state.groups = saved.groups
      .filter((g) => g && Array.isArray(g.members))
      .map((g) => ({ name: String(g.name ?? "group"), members: g.members.filter(known) }))
      .filter((g) => g.members.length > 1);
  }
  if (saved.labels && typeof saved.labels === "object") {
    for (const [id, text] of Object.entries(saved.labels)) if (known(id) && typeof text === "string") state.labels[id] = text.slice(0, 200);
  }
  if (saved.region && Array.isArray(saved.region.cells)) state.region = { cells: saved.region.cells.filter(Number.isInteger) };
  if (Array.isArray(saved.expanded)) {
    const ids = new Set(supernodes(circuit).map((s) => s.id));
    state.expanded = saved.expanded.filter((id) => ids.has(id));
  }
  return state;
}
