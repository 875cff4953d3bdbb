// Pure geometry of the studio's drawing: what a pointer on the displayed
// image means in the image's own pixels, and which marks become a
// `mask_region` or a mask. No DOM here, so `node --test` checks it.

/** A display point (CSS pixels inside the shown image) in image pixels, clamped to the image. */
export function toImagePoint(point, shown, natural) {
  const sx = natural.width / shown.width;
  const sy = natural.height / shown.height;
  return {
    x: clamp(Math.round(point.x * sx), 0, natural.width),
    y: clamp(Math.round(point.y * sy), 0, natural.height),
  };
}

/** The rectangle two corners span (any drag direction), or null when it has no area. */
export function rectFrom(a, b) {
  const x = Math.min(a.x, b.x);
  const y = Math.min(a.y, b.y);
  const width = Math.abs(a.x - b.x);
  const height = Math.abs(a.y - b.y);
  return width > 0 && height > 0 ? { x, y, width, height } : null;
}

/**
 * Checks a typed region against the image: whole pixels, inside it, with area.
 * Returns the region or a message a person can act on.
 */
export function checkRegion(region, natural) {
  const fields = ["x", "y", "width", "height"];
  for (const name of fields) {
    const value = region[name];
    if (!Number.isInteger(value) || value < 0) {
      return { error: `${name} must be a whole number of pixels, 0 or more` };
    }
  }
  if (region.width === 0 || region.height === 0) {
    return { error: "the region needs a width and a height" };
  }
  if (region.x + region.width > natural.width || region.y + region.height > natural.height) {
    return { error: `the region must fit inside the image (${natural.width}×${natural.height})` };
  }
  return { region };
}

/**
 * What an edit sends for the marks made: nothing (the whole image), one
 * rectangle as `mask_region` (the server draws the mask), or a mask to
 * upload when any brush stroke or several rectangles are involved.
 */
export function editTarget(marks) {
  if (marks.length === 0) return { kind: "whole" };
  if (marks.length === 1 && marks[0].kind === "rect") return { kind: "region", region: marks[0].rect };
  return { kind: "mask" };
}

/** Draws the marks as transparent holes in an opaque layer (a 2D context of the image's size). */
export function paintMask(ctx, marks, natural) {
  ctx.globalCompositeOperation = "source-over";
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, natural.width, natural.height);
  ctx.globalCompositeOperation = "destination-out";
  for (const mark of marks) traceMark(ctx, mark);
  ctx.globalCompositeOperation = "source-over";
}

/** Fills or strokes one mark on a context in image pixels. */
export function traceMark(ctx, mark) {
  if (mark.kind === "rect") {
    const { x, y, width, height } = mark.rect;
    ctx.fillRect(x, y, width, height);
    return;
  }
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.lineWidth = mark.size;
  ctx.beginPath();
  const [first, ...rest] = mark.points;
  ctx.moveTo(first.x, first.y);
  // A click without a drag still paints a dot.
  if (rest.length === 0) ctx.lineTo(first.x + 0.01, first.y);
  for (const point of rest) ctx.lineTo(point.x, point.y);
  ctx.stroke();
}

/**
 * The images a tool result carries: `structuredContent.image_urls` (each
 * with its Content Credentials, null when it has none), else its resource links.
 */
export function imagesOf(result) {
  const structured = result?.structuredContent;
  if (structured && Array.isArray(structured.image_urls)) {
    return structured.image_urls.map((url, i) => ({
      url,
      size: structured.size,
      model: structured.model,
      credentials: structured.content_credentials?.[i] ?? null,
    }));
  }
  return (result?.content ?? [])
    .filter((block) => block.type === "resource_link" && typeof block.uri === "string")
    .map((block) => ({ url: block.uri }));
}

/** The first text of a tool error, for the status line. */
export function errorText(result) {
  const text = (result?.content ?? []).find((block) => block.type === "text");
  return text?.text ?? "the gateway refused the call";
}

function clamp(value, low, high) {
  return Math.min(Math.max(value, low), high);
}
