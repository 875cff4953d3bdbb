import { test } from "node:test";
import assert from "node:assert/strict";
import { credentialRows, editedFromText, sourceTypeText } from "./credentials.js";

const AI = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia";
const generated = {
  manifest_label: "urn:c2pa:one",
  signer: "mcp-image-gateway development",
  digital_source_type: AI,
  software_agent: "gpt-image-1 (openai)",
};
const gallery = [{ url: "https://g/images/one.png?sig=x", credentials: generated }];

test("a generation says which model made it, that it is AI-made, and who signed it", () => {
  assert.deepEqual(credentialRows(generated, gallery), [
    { term: "Made by", text: "gpt-image-1 (openai)" },
    { term: "Kind", text: "AI-generated (trained algorithmic media)" },
    { term: "Signed by", text: "mcp-image-gateway development" },
    { term: "Manifest", text: "urn:c2pa:one" },
  ]);
  assert.deepEqual(credentialRows(null, gallery), [], "no credentials, no rows");
});

test("an edit names its source as the gallery does, by manifest, else link, else reference", () => {
  const byLabel = { manifest_label: "urn:c2pa:one", reference: "image://acme/x.png" };
  assert.equal(editedFromText(byLabel, gallery), "Image 1");
  assert.equal(editedFromText({ reference: "https://g/images/one.png?sig=x" }, gallery), "Image 1");
  assert.equal(editedFromText({ reference: "https://g/images/two.png?sig=y" }, gallery), "https://g/images/two.png");
  assert.equal(editedFromText({ manifest_label: "urn:c2pa:z" }, []), "an image with Content Credentials urn:c2pa:z");
  const edit = { ...generated, edited_from: byLabel };
  assert.deepEqual(credentialRows(edit, gallery)[2], { term: "Edited from", text: "Image 1" });
});

test("source types read as words", () => {
  assert.equal(sourceTypeText(AI), "AI-generated (trained algorithmic media)");
  assert.equal(sourceTypeText("http://cv.iptc.org/newscodes/digitalsourcetype/virtualRecording"), "virtual recording");
  assert.equal(sourceTypeText(undefined), "Not stated");
});
