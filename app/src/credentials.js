// What the studio says about the selected image's Content Credentials (the
// C2PA manifest the gateway signed into it), from the tool result's
// `content_credentials`: which model made it, what kind of media it is,
// who signed it and which image it was edited from. No DOM here, so
// `node --test` checks it.

/** IPTC digital source types a person may meet here, in words. */
const SOURCE_TYPES = {
  trainedAlgorithmicMedia: "AI-generated (trained algorithmic media)",
  compositeWithTrainedAlgorithmicMedia: "Partly AI-generated (composite with trained algorithmic media)",
  algorithmicMedia: "Computer-generated (algorithmic media)",
  digitalCapture: "Camera capture",
};

/** An IPTC digital source type URI in words (else its last segment, split into words). */
export function sourceTypeText(uri) {
  const code = String(uri ?? "").split("/").pop();
  if (!code) return "Not stated";
  return SOURCE_TYPES[code] ?? code.replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase();
}

/**
 * Which image an edit started from, as the gallery names it: the gallery
 * image whose manifest (else link) is the edit's parent, else the
 * reference given, without its query (a signed link's signature).
 */
export function editedFromText(from, images) {
  const index = images.findIndex(
    (image) =>
      (from.manifest_label && image.credentials?.manifest_label === from.manifest_label) ||
      (from.reference && image.url === from.reference),
  );
  if (index >= 0) return `Image ${index + 1}`;
  if (from.reference) return from.reference.split("?")[0];
  return from.manifest_label ? `an image with Content Credentials ${from.manifest_label}` : "an image";
}

/**
 * The rows to show for `credentials` (null: the image carries none), each
 * `{ term, text }`; `images` is the gallery, to name an edit's source.
 */
export function credentialRows(credentials, images) {
  if (!credentials) return [];
  const rows = [
    { term: "Made by", text: credentials.software_agent || "Not stated" },
    { term: "Kind", text: sourceTypeText(credentials.digital_source_type) },
  ];
  if (credentials.edited_from) rows.push({ term: "Edited from", text: editedFromText(credentials.edited_from, images) });
  rows.push({ term: "Signed by", text: credentials.signer || "Not stated" });
  rows.push({ term: "Manifest", text: credentials.manifest_label });
  return rows;
}
