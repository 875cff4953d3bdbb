// Validates every KEDA ScaledObject in the given YAML files against KEDA's
// CRD schema (@kubernetes-models/keda): prints `valid ScaledObject NAME`
// per resource, or the schema's complaint and exit 1.
import { readFileSync } from "node:fs";
import yaml from "js-yaml";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";

let failed = false;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (!doc || doc.kind !== "ScaledObject") continue;
    try {
      new ScaledObject(doc).validate();
      console.log(`valid ScaledObject ${doc.metadata.name}`);
    } catch (error) {
      console.log(`invalid ScaledObject ${doc.metadata?.name} in ${file}: ${error.message}`);
      failed = true;
    }
  }
}
process.exit(failed ? 1 : 0);
