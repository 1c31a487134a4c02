// The viewers' CSS, added once per document (ComfyUI page or standalone report).

const CSS = `
.dfx-root { font: 12px/1.4 system-ui, sans-serif; color: #ddd; background: #1e1f22; display: flex; flex-direction: column;
  height: 100%; min-height: 0; box-sizing: border-box; border-radius: 4px; overflow: hidden; }
.dfx-toolbar { display: flex; flex-wrap: wrap; gap: 4px 10px; align-items: center; padding: 4px 6px; border-bottom: 1px solid #4445; }
.dfx-toolbar label { display: inline-flex; gap: 4px; align-items: center; white-space: nowrap; }
.dfx-toolbar input[type=range] { width: 90px; }
.dfx-toolbar button, .dfx-details button { font: inherit; padding: 1px 7px; border-radius: 3px; border: 1px solid #6668;
  background: #3335; color: inherit; cursor: pointer; }
.dfx-toolbar button[aria-pressed=true] { background: #2f6fd9; color: #fff; }
.dfx-body { display: flex; flex: 1; min-height: 0; }
.dfx-graph { position: relative; flex: 1 1 60%; min-width: 0; outline: none; }
.dfx-graph canvas { position: absolute; inset: 0; width: 100%; height: 100%; cursor: grab; }
.dfx-side { flex: 0 0 34%; max-width: 360px; min-width: 150px; display: flex; flex-direction: column; border-left: 1px solid #4445;
  overflow: auto; }
.dfx-image { position: relative; aspect-ratio: 1; width: 100%; flex: none; }
.dfx-image canvas { position: absolute; inset: 0; width: 100%; height: 100%; cursor: crosshair; }
.dfx-details { padding: 4px 6px; }
.dfx-details h4 { margin: 2px 0; font-size: 12px; }
.dfx-details input.dfx-label { width: 100%; box-sizing: border-box; font: inherit; }
.dfx-details table { border-collapse: collapse; width: 100%; } .dfx-details td { padding: 0 3px; }
.dfx-tokens span { padding: 0 2px; margin: 1px; display: inline-block; border-radius: 2px; }
.dfx-auto-label { font-weight: 600; margin: 4px 0; }
.dfx-crops img { margin: 0 4px 4px 0; border: 1px solid #555; }
.dfx-muted { opacity: .7; }
.dfx-primary { background: #2f6fd9 !important; color: #fff !important; border-color: #2f6fd9 !important; }
.dfx-legend { font-size: 11px; }
.dfx-legend[open] { flex-basis: 100%; }
.dfx-legend > div { display: inline-block; margin-right: 12px; }
.dfx-legend summary { cursor: pointer; opacity: .8; }
.dfx-legend .dfx-line { display: inline-block; width: 18px; height: 3px; margin: 0 4px 2px 2px; vertical-align: middle; }
.dfx-colourbar { display: flex; align-items: center; gap: 4px; padding: 2px 6px; font-size: 11px; flex-wrap: wrap; }
.dfx-colourbar[hidden] { display: none; }
.dfx-colourbar i { flex: 1 1 60px; height: 8px; min-width: 60px; border-radius: 2px; }
.dfx-colourbar-title { flex-basis: 100%; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.dfx-circuit { container-type: inline-size; }
@container (max-width: 640px) {
  .dfx-body { flex-direction: column; }
  .dfx-graph { flex: 1 1 55%; min-height: 200px; }
  .dfx-side { flex: 0 1 45%; max-width: none; flex-direction: row; flex-wrap: wrap; border-left: 0; border-top: 1px solid #4445; }
  .dfx-side .dfx-image { width: 42%; }
  .dfx-side .dfx-colourbar { order: 3; width: 42%; }
  .dfx-side .dfx-details { flex: 1 1 50%; min-width: 0; }
}
.dfx-feature-table { overflow: auto; }
.dfx-table-box { flex: 0 1 auto; max-height: 45%; overflow: auto; }
.dfx-table { border-collapse: collapse; width: 100%; font-size: 11px; }
.dfx-table th { position: sticky; top: 0; background: #2a2b2f; text-align: left; padding: 2px 4px; cursor: help; }
.dfx-table td { padding: 1px 4px; border-top: 1px solid #4443; white-space: nowrap; max-width: 180px; overflow: hidden; text-overflow: ellipsis; }
.dfx-table tbody tr { cursor: pointer; }
.dfx-table tbody tr:hover { background: #ffffff10; }
.dfx-table tr.dfx-selected { background: #2f6fd955; }
.dfx-strip-box { padding: 4px 6px; }
.dfx-strip-box[hidden] { display: none; }
.dfx-tokens span.dfx-row-token { outline: 1px solid #fff; }
.dfx-heatmap-box { flex: 1 1 auto; min-height: 180px; }
.dfx-heatmap { display: flex; flex-direction: column; height: 100%; }
.dfx-heatmap .dfx-image { flex: 1; aspect-ratio: auto; min-height: 120px; }
`;

/** A viewer's root element (class "dfx-root <kind>") with `html` inside, appended to `container`. */
export function createRoot(container, kind, html) {
  const doc = container.ownerDocument;
  ensureStyle(doc);
  const root = doc.createElement("div");
  root.className = `dfx-root ${kind}`;
  root.innerHTML = html;
  container.appendChild(root);
  return root;
}

function ensureStyle(doc) {
  if (doc.getElementById("dfx-style")) return;
  const style = doc.createElement("style");
  style.id = "dfx-style";
  style.textContent = CSS;
  doc.head.appendChild(style);
}
