"""Static checks of the HTTP API description, before it is tested against the
running bridge with schemathesis.

Usage: api_conformance.py OPENAPI.yaml SEED.json

- the document is valid OpenAPI (openapi-spec-validator);
- the callback's `pushError` example equals the seed sample as JSON values, so
  the description and the fixtures cannot drift apart;
- every example of a request or response body is valid against the schema it
  illustrates, and the seed sample is a valid `PushErrorCallback`.

Exits non-zero with every problem found on stderr.
"""

import json
import sys

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

BASE = "urn:css-kafka-bridge:openapi"


def validator(registry, *segments):
    """A validator for the schema at the path `segments` in the OpenAPI document."""
    pointer = "".join("/" + s.replace("~", "~0").replace("/", "~1") for s in segments)
    return Draft202012Validator({"$ref": f"{BASE}#{pointer}"}, registry=registry)


def problems_of(validator_, instance, where):
    problems = []
    for error in validator_.iter_errors(instance):
        # For a `oneOf`/`anyOf` miss, the deepest reason says more than the whole instance.
        error = best_match(error.context) if error.context else error
        path = "/".join(map(str, error.absolute_path)) or "(root)"
        message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
        problems.append(f"{where}: {path}: {message}")
    return problems


def main():
    spec_path, seed_path = sys.argv[1], sys.argv[2]
    with open(spec_path, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    with open(seed_path, encoding="utf-8") as f:
        seed = json.load(f)

    validate(spec)

    registry = Registry().with_resource(BASE, Resource(contents=spec, specification=DRAFT202012))
    problems = []

    callback = spec["paths"]["/css/callback"]["post"]
    examples = callback["requestBody"]["content"]["application/json"]["examples"]
    if examples["pushError"]["value"] != seed:
        problems.append(f"the pushError example differs from {seed_path}")
    push_error = validator(registry, "components", "schemas", "PushErrorCallback")
    problems += problems_of(push_error, seed, f"{seed_path} as a PushErrorCallback")

    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            bodies = [("request", ("requestBody",), operation.get("requestBody", {}))]
            bodies += [
                (f"response {status}", ("responses", status), response)
                for status, response in operation["responses"].items()
            ]
            for what, at, described in bodies:
                for media_type, body in described.get("content", {}).items():
                    if media_type != "application/json":
                        continue
                    where = f"{method.upper()} {path} {what}"
                    schema = validator(
                        registry, "paths", path, method, *at, "content", media_type, "schema"
                    )
                    if "example" in body:
                        problems += problems_of(schema, body["example"], f"{where} example")
                    for name, example in body.get("examples", {}).items():
                        where_example = f"{where} example {name}"
                        problems += problems_of(schema, example["value"], where_example)

    if problems:
        sys.exit("\n".join(problems))
    print(f"{spec_path}: valid OpenAPI {spec['openapi']}; examples valid, seed sample in step")


if __name__ == "__main__":
    main()
