#!/usr/bin/env python3
"""Derives a schema fixture from a CustomResourceDefinition file.

    extract.py CRD.yaml KIND VERSION OUT_DIR

Writes OUT_DIR/<group>_<version>_<kind>.json: the openAPIV3Schema of that
version of that kind, with every `description` removed (the fixtures are
for validation; the upstream files carry the prose). Nothing else is
changed: strictness (no unknown fields) is added at validation time by
tests/support/crd_validate.py. See README.md for where each fixture came
from.
"""
import json
import sys

import yaml


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main():
    crd_file, kind, version, out_dir = sys.argv[1:5]
    for doc in yaml.safe_load_all(open(crd_file)):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        if spec["names"]["kind"] != kind:
            continue
        for v in spec["versions"]:
            if v["name"] == version:
                schema = strip(v["schema"]["openAPIV3Schema"])
                out = f"{out_dir}/{spec['group']}_{version}_{kind}.json"
                with open(out, "w") as f:
                    json.dump(schema, f, indent=None, separators=(",", ":"), sort_keys=True)
                    f.write("\n")
                print(out)
                return
    sys.exit(f"{crd_file}: no {kind} {version}")


if __name__ == "__main__":
    main()
