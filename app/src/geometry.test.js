import { test } from "node:test";
import assert from "node:assert/strict";
import { checkRegion, editTarget, imagesOf, rectFrom, toImagePoint } from "./geometry.js";

test("display points scale to image pixels and stay inside the image", () => {
  const shown = { width: 256, height: 128 };
  const natural = { width: 1024, height: 512 };
  assert.deepEqual(toImagePoint({ x: 64, y: 32 }, shown, natural), { x: 256, y: 128 });
  assert.deepEqual(toImagePoint({ x: -5, y: 900 }, shown, natural), { x: 0, y: 512 });
});

test("a drag in any direction spans the same rectangle; a click spans none", () => {
  const r = rectFrom({ x: 30, y: 40 }, { x: 10, y: 5 });
  assert.deepEqual(r, { x: 10, y: 5, width: 20, height: 35 });
  assert.equal(rectFrom({ x: 3, y: 3 }, { x: 3, y: 9 }), null);
});

test("typed regions are checked against the image with a message to act on", () => {
  const natural = { width: 100, height: 50 };
  assert.deepEqual(checkRegion({ x: 0, y: 0, width: 100, height: 50 }, natural).region, {
    x: 0,
    y: 0,
    width: 100,
    height: 50,
  });
  assert.match(checkRegion({ x: 1.5, y: 0, width: 2, height: 2 }, natural).error, /^x must be a whole number/);
  assert.match(checkRegion({ x: 0, y: 0, width: 0, height: 2 }, natural).error, /needs a width/);
  assert.match(checkRegion({ x: 90, y: 0, width: 20, height: 2 }, natural).error, /fit inside the image \(100×50\)/);
});

test("one rectangle is a mask_region; strokes or several rectangles need a mask", () => {
  const rect = { kind: "rect", rect: { x: 1, y: 2, width: 3, height: 4 } };
  const stroke = { kind: "stroke", size: 8, points: [{ x: 1, y: 1 }] };
  assert.deepEqual(editTarget([]), { kind: "whole" });
  assert.deepEqual(editTarget([rect]), { kind: "region", region: rect.rect });
  assert.deepEqual(editTarget([stroke]), { kind: "mask" });
  assert.deepEqual(editTarget([rect, rect]), { kind: "mask" });
});

test("images come from structured content, else from resource links", () => {
  const structured = { structuredContent: { image_urls: ["https://g/images/a"], size: "64x64", model: "m" } };
  assert.deepEqual(imagesOf(structured), [{ url: "https://g/images/a", size: "64x64", model: "m", credentials: null }]);
  const credentials = { manifest_label: "urn:c2pa:1", signer: "s" };
  const signed = { structuredContent: { ...structured.structuredContent, content_credentials: [credentials] } };
  assert.equal(imagesOf(signed)[0].credentials, credentials);
  const links = { content: [{ type: "text", text: "x" }, { type: "resource_link", uri: "https://g/images/b" }] };
  assert.deepEqual(imagesOf(links), [{ url: "https://g/images/b" }]);
  assert.deepEqual(imagesOf(undefined), []);
});
