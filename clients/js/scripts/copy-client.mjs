// prepack: the package ships the one client the Django app serves
// (realtime/static/realtime/client.js), copied in at pack time and never kept in git.
import { copyFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const source = fileURLToPath(new URL("../../../realtime/static/realtime/client.js", import.meta.url));
const target = fileURLToPath(new URL("../client.js", import.meta.url));
copyFileSync(source, target);
