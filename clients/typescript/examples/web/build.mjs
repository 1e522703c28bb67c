// Bundles the page (app.tsx) into dist/app.js with esbuild: `npm run build:web`.
import { build } from "esbuild";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
await build({
  entryPoints: [`${here}app.tsx`],
  outfile: `${here}dist/app.js`,
  bundle: true,
  format: "esm",
  jsx: "automatic",
  target: "es2022",
  minify: true,
  sourcemap: true,
  logLevel: "warning",
  // generated/ts lives outside this package: its imports resolve to this package's modules
  nodePaths: [fileURLToPath(new URL("../../node_modules", import.meta.url))],
  define: { "process.env.NODE_ENV": '"production"' },
});
