// The image studio: a gallery of the call's images, the selected one's
// Content Credentials, a rectangle or brush to mark the region to change,
// and edit_image / generate_image through the host's tools/call relay. The app never holds the caller's credentials.
import { App, applyDocumentTheme, applyHostFonts, applyHostStyleVariables } from "@modelcontextprotocol/ext-apps";
import { credentialRows } from "./credentials.js";
import { checkRegion, editTarget, errorText, imagesOf, paintMask, rectFrom, toImagePoint, traceMark } from "./geometry.js";

const $ = (id) => document.getElementById(id);
const ui = {
  empty: $("empty"), gallery: $("gallery"), editor: $("editor"), picture: $("picture"), overlay: $("overlay"),
  brushSize: $("brush-size"), prompt: $("prompt"), style: $("style"), size: $("size"), model: $("model"),
  status: $("status"), region: ["x", "y", "width", "height"].map((name) => $(`region-${name}`)),
  credentials: $("credentials-list"), noCredentials: $("credentials-none"),
};
const state = { images: [], selected: -1, marks: [], drag: null, pendingPrompt: "" };

const app = new App({ name: "image-studio", version: "1.0.0" }, {});

// Handlers first: the host may send the tool's input and result right after the handshake.
app.ontoolinput = (params) => {
  state.pendingPrompt = typeof params.arguments?.prompt === "string" ? params.arguments.prompt : "";
};
app.ontoolresult = (result) => addResult(result, state.pendingPrompt);
app.onhostcontextchanged = applyContext;
app.onteardown = async () => ({});

function applyContext(context) {
  if (!context) return;
  if (context.theme) applyDocumentTheme(context.theme);
  if (context.styles?.variables) applyHostStyleVariables(context.styles.variables);
  if (context.styles?.css?.fonts) applyHostFonts(context.styles.css.fonts);
}

function say(message, isError = false) {
  ui.status.textContent = message;
  ui.status.classList.toggle("error", isError);
}

/**
 * Adds a tool result's images to the gallery (a tool error goes to the
 * status line). `prompt` made them; `basePrompt` is the generation they
 * descend from, which variations repeat.
 */
function addResult(result, prompt, basePrompt = prompt) {
  if (result?.isError) return say(errorText(result), true);
  const images = imagesOf(result);
  if (images.length === 0) return;
  const first = state.images.length;
  for (const image of images) state.images.push({ ...image, prompt, basePrompt });
  renderGallery();
  select(first);
  say(`${images.length} image${images.length > 1 ? "s" : ""} added`);
}

function renderGallery() {
  ui.empty.hidden = state.images.length > 0;
  ui.gallery.replaceChildren(
    ...state.images.map((image, index) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.setAttribute("aria-pressed", String(index === state.selected));
      button.setAttribute("aria-label", `Image ${index + 1}${image.prompt ? `: ${image.prompt}` : ""}`);
      const thumb = document.createElement("img");
      thumb.src = image.url;
      thumb.alt = "";
      const caption = document.createElement("span");
      caption.textContent = image.prompt || `Image ${index + 1}`;
      button.append(thumb, caption);
      button.addEventListener("click", () => select(index));
      item.append(button);
      return item;
    }),
  );
}

function select(index) {
  state.selected = index;
  state.marks = [];
  ui.editor.hidden = false;
  ui.picture.alt = `Selected image ${index + 1}`;
  ui.picture.onload = () => { sizeOverlay(); redraw(); };
  ui.picture.src = state.images[index].url;
  for (const button of ui.gallery.querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.parentElement === ui.gallery.children[index]));
  }
  showCredentials(state.images[index]);
}

/** The selected image's Content Credentials, as its tool result listed them. */
function showCredentials(image) {
  const rows = credentialRows(image.credentials, state.images);
  ui.noCredentials.hidden = rows.length > 0;
  ui.credentials.replaceChildren(
    ...rows.flatMap(({ term, text }) => [
      Object.assign(document.createElement("dt"), { textContent: term }),
      Object.assign(document.createElement("dd"), { textContent: text }),
    ]),
  );
}

const natural = () => ({ width: ui.picture.naturalWidth, height: ui.picture.naturalHeight });
const tool = () => document.querySelector('input[name="tool"]:checked').value;

function sizeOverlay() {
  ui.overlay.width = ui.picture.naturalWidth;
  ui.overlay.height = ui.picture.naturalHeight;
}

/** The overlay is in image pixels; CSS scales it onto the shown image. */
function redraw() {
  const ctx = ui.overlay.getContext("2d");
  ctx.clearRect(0, 0, ui.overlay.width, ui.overlay.height);
  ctx.fillStyle = ctx.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue("--mark").trim() || "rgba(37,99,235,.45)";
  for (const mark of state.drag ? [...state.marks, state.drag] : state.marks) {
    if (mark.kind === "rect" && !mark.rect) continue;
    traceMark(ctx, mark);
  }
  const last = [...state.marks].reverse().find((mark) => mark.kind === "rect");
  const shown = last?.rect ?? null;
  const values = shown ? [shown.x, shown.y, shown.width, shown.height] : [];
  ui.region.forEach((input, i) => (input.value = shown ? String(values[i]) : ""));
}

function pointerPoint(event) {
  const box = ui.overlay.getBoundingClientRect();
  return toImagePoint({ x: event.clientX - box.left, y: event.clientY - box.top }, box, natural());
}

ui.overlay.addEventListener("pointerdown", (event) => {
  if (state.selected < 0) return;
  ui.overlay.setPointerCapture(event.pointerId);
  const start = pointerPoint(event);
  const size = Math.max(1, Math.round(Number(ui.brushSize.value) * (natural().width / ui.overlay.getBoundingClientRect().width)));
  state.drag = tool() === "rect" ? { kind: "rect", start, rect: null } : { kind: "stroke", size, points: [start] };
  redraw();
});
ui.overlay.addEventListener("pointermove", (event) => {
  if (!state.drag) return;
  const point = pointerPoint(event);
  if (state.drag.kind === "rect") state.drag.rect = rectFrom(state.drag.start, point);
  else state.drag.points.push(point);
  redraw();
});
const endDrag = () => {
  const drag = state.drag;
  state.drag = null;
  if (drag && (drag.kind === "stroke" || drag.rect)) {
    state.marks.push(drag.kind === "rect" ? { kind: "rect", rect: drag.rect } : drag);
    say(describeMarks());
  }
  redraw();
};
ui.overlay.addEventListener("pointerup", endDrag);
ui.overlay.addEventListener("pointercancel", endDrag);

function describeMarks() {
  const target = editTarget(state.marks);
  if (target.kind === "whole") return "No region marked: the whole image will change";
  if (target.kind === "region") {
    const { x, y, width, height } = target.region;
    return `Region ${width}×${height} at ${x},${y} marked`;
  }
  const n = state.marks.length;
  return `${n} mark${n > 1 ? "s" : ""} drawn`;
}

$("undo").addEventListener("click", () => { state.marks.pop(); redraw(); say(describeMarks()); });
$("clear").addEventListener("click", () => { state.marks = []; redraw(); say(describeMarks()); });
$("region-apply").addEventListener("click", () => {
  const [x, y, width, height] = ui.region.map((input) => Number(input.value === "" ? NaN : input.value));
  const checked = checkRegion({ x, y, width, height }, natural());
  if (checked.error) return say(`Region not set: ${checked.error}`, true);
  state.marks = [{ kind: "rect", rect: checked.region }];
  redraw();
  say(describeMarks());
});

/** A tool call through the host; a tool error becomes an exception with its message. */
async function call(name, args) {
  const result = await app.callServerTool({ name, arguments: args });
  if (result.isError) throw new Error(errorText(result));
  return result;
}

function chosen() {
  const options = {};
  if (ui.style.value) options.style = ui.style.value;
  if (ui.size.value) options.size = ui.size.value;
  if (ui.model.value) options.model = ui.model.value;
  return options;
}

/** Paints the marks into a mask of the image's size, uploads it, returns its reference. */
async function uploadMask() {
  const canvas = document.createElement("canvas");
  Object.assign(canvas, natural());
  paintMask(canvas.getContext("2d"), state.marks, natural());
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  const ticket = (await call("create_upload", { content_type: "image/png" })).structuredContent;
  const sent = await fetch(ticket.upload_url, { method: ticket.method, headers: ticket.headers, body: blob });
  if (!sent.ok) throw new Error(`the mask upload was refused (HTTP ${sent.status})`);
  return ticket.reference;
}

async function busy(label, work) {
  const buttons = [...document.querySelectorAll("#editor button")];
  buttons.forEach((button) => (button.disabled = true));
  say(label);
  try {
    await work();
  } catch (error) {
    say(error.message, true);
  } finally {
    buttons.forEach((button) => (button.disabled = false));
  }
}

$("run-edit").addEventListener("click", () => {
  const image = state.images[state.selected];
  const prompt = ui.prompt.value.trim();
  if (!image) return;
  if (!prompt) { say("Type what to change first", true); ui.prompt.focus(); return; }
  busy("Editing…", async () => {
    const args = { images: [image.url], prompt, ...chosen() };
    const target = editTarget(state.marks);
    if (target.kind === "region") args.mask_region = target.region;
    if (target.kind === "mask") args.mask = await uploadMask();
    addResult(await call("edit_image", args), prompt, image.basePrompt);
    app.updateModelContext({ content: [{ type: "text", text: `The user edited image ${state.selected} in the image studio: "${prompt}".` }] }).catch(() => {});
  });
});

$("variations").addEventListener("click", () => {
  const image = state.images[state.selected];
  if (!image?.basePrompt) return say("This image has no prompt to vary", true);
  const prompt = image.basePrompt;
  busy("Making variations…", async () => addResult(await call("generate_image", { prompt, ...chosen() }), prompt));
});

$("open").addEventListener("click", () => {
  const image = state.images[state.selected];
  if (image) app.openLink({ url: image.url }).catch((error) => say(error.message, true));
});

$("download").addEventListener("click", () => {
  const image = state.images[state.selected];
  if (!image) return;
  const name = `image-${state.selected + 1}`;
  app
    .downloadFile({ contents: [{ type: "resource_link", uri: image.url, name }] })
    .then((result) => result?.isError && say("The host did not download the image", true))
    .catch((error) => say(error.message, true));
});

/** Fills the style, size and model choices from what list_models offers this caller. */
async function loadChoices() {
  try {
    const offered = (await call("list_models", {})).structuredContent ?? {};
    const fill = (select, values) =>
      select.append(...(values ?? []).map((value) => Object.assign(document.createElement("option"), { value, textContent: value })));
    fill(ui.style, offered.styles);
    fill(ui.size, offered.sizes);
    fill(ui.model, offered.selectable);
  } catch (error) {
    say(`Choices unavailable: ${error.message}`, true);
  }
}

await app.connect();
applyContext(app.getHostContext());
loadChoices();
