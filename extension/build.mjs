// Bundles src/index.ts into the ES module anywidget loads, and copies the stylesheet beside it.
// Output goes to ../terra_nb/static, which is committed so `pip install` needs no Node.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

const out = new URL("../terra_nb/static/", import.meta.url);
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ["src/index.ts"],
  bundle: true,
  format: "esm",
  minify: true,
  target: "es2020",
  legalComments: "none",
  outfile: new URL("graph_explorer.js", out).pathname,
  logLevel: "info",
});
copyFileSync(new URL("src/style.css", import.meta.url), new URL("graph_explorer.css", out));
