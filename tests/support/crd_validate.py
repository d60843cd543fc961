#!/usr/bin/env python3
"""Validates custom resources offline against their CRDs' OpenAPI schemas.

    crd_validate.py SCHEMA_DIR FILE.yaml...

For every document of every FILE, the schema SCHEMA_DIR/<group>_<version>_<kind>.json
(tests/deploy_schemas/, derived from the upstream CRDs) is applied with
jsonschema, made strict the way the API server's strict field validation
is: an object schema that lists `properties` and neither sets
`additionalProperties` nor `x-kubernetes-preserve-unknown-fields` accepts
no other field. metadata.name must be a DNS subdomain (and namespace a
DNS label). Not checked: the CEL rules (`x-kubernetes-validations`) and
`format`s, which need an API server.

Prints one line per document (`ok <kind>/<name> (<fixture>)`, every error
with its path, or `builtin <kind>/<name>` for Kubernetes' own kinds, which
are kubernetes-validate's job) and exits 1 if any document failed or has
no fixture.
Run by tests/deploy_*.rs with .venv/bin/python3 (jsonschema and PyYAML come
with kubernetes-validate: scripts/install-test-deps.sh).
"""
import json
import os
import re
import sys

import jsonschema
import yaml

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def strict(node):
    if isinstance(node, dict):
        out = {k: strict(v) for k, v in node.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


def where(path):
    return ".".join(str(p) for p in path) or "(root)"


def check(schema_dir, doc):
    api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    meta = doc.get("metadata") or {}
    name = meta.get("name", "")
    label = f"{kind}/{name}"
    group, _, version = api.rpartition("/")
    if "." not in group:
        # v1, apps/v1, policy/v1...: Kubernetes' own kinds, which
        # kubernetes-validate checks.
        return label, None
    fixture = f"{group}_{version}_{kind}.json"
    path = os.path.join(schema_dir, fixture)
    if not os.path.exists(path):
        return label, [f"no schema fixture {fixture} in {schema_dir}"]
    schema = strict(json.load(open(path)))
    # CRD schemas may leave out the fields every object has (the API server
    # checks those itself); allow them at the top.
    props = schema.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    props.setdefault("metadata", {"type": "object"})
    errors = [
        f"{where(e.absolute_path)}: {e.message}"
        for e in sorted(
            jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))
        )
    ]
    if not DNS_SUBDOMAIN.match(name) or len(name) > 253:
        errors.append(f"metadata.name: {name!r} is not a DNS subdomain")
    ns = meta.get("namespace")
    if ns is not None and (not DNS_LABEL.match(ns) or len(ns) > 63):
        errors.append(f"metadata.namespace: {ns!r} is not a DNS label")
    return f"{label} ({fixture})", errors


def main():
    schema_dir, files = sys.argv[1], sys.argv[2:]
    failed = 0
    for f in files:
        for doc in yaml.safe_load_all(open(f)):
            if not doc:
                continue
            label, errors = check(schema_dir, doc)
            if errors is None:
                print(f"builtin {f}: {label}")
            elif errors:
                failed += 1
                for e in errors:
                    print(f"FAIL {f}: {label}: {e}")
            else:
                print(f"ok {f}: {label}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
