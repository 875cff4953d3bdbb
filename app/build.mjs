// Builds the image studio into one self-contained HTML file (no CDN: the
// host's CSP allows no script origin) that the upstream embeds with
// include_str!. `--check` fails when the committed file is not what the
// sources build to.
import { build } from "esbuild";
import { readFile, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const OUT = here("../upstream/assets/image-studio.html");

const bundle = await build({
  entryPoints: [here("src/studio.js")],
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  minify: true,
  legalComments: "none",
  write: false,
});
const script = bundle.outputFiles[0].text.replaceAll("</script", "<\\/script");
const page = await readFile(here("src/studio.html"), "utf8");
const html = page.replace("<!-- SCRIPT -->", () => `<script type="module">${script}</script>`);

if (process.argv.includes("--check")) {
  const committed = await readFile(OUT, "utf8").catch(() => "");
  if (committed !== html) {
    console.error("upstream/assets/image-studio.html is not what app/src builds to: run `make app` and commit it");
    process.exit(1);
  }
  console.log("upstream/assets/image-studio.html is current");
} else {
  await writeFile(OUT, html);
  console.log(`wrote upstream/assets/image-studio.html (${html.length} bytes)`);
}
