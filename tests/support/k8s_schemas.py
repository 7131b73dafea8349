"""Schemas the Kubernetes manifests are checked against, the way a cluster's API server checks
them, strictly (a field the schema does not know is an error, as with `kubectl apply
--validate=strict`):

- built-in kinds: the Kubernetes API's OpenAPI schema of a current release, from
  kubernetes-validate (PyPI, the dev extra);
- prometheus-operator's ServiceMonitor and PrometheusRule: the CRDs' types as generated into
  cloudcoil-models-prometheus-operator (PyPI, the dev extra; pydantic models that ignore unknown
  fields, so an object must survive a round trip through its model unchanged);
- KServe's InferenceService and ServingRuntime: the API types of KServe's own SDK (the `kserve`
  wheel, fetched by `make deploy-tools` without installing it: it pins a web stack of its own),
  which KServe generates from the same Go types as its CRDs: each KServe type's fields from the
  wheel's models (`openapi_types`, `attribute_map`), the Kubernetes types inside them (containers,
  resources, tolerations...) against the Kubernetes API schema above.
"""

from __future__ import annotations

import ast
import functools
import importlib.resources
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import referencing

from support.tools import MissingTool

K8S_VERSION = "1.37.0"
KSERVE_VERSION = "0.21.0"
KSERVE_WHEEL = Path(sys.prefix) / "k8s-schemas" / f"kserve-{KSERVE_VERSION}-py3-none-any.whl"
_DEFS_ID = "/api/_definitions.json"


def validate_builtin(doc: dict[str, Any]) -> None:
    """Raises jsonschema.ValidationError unless `doc` is valid for the Kubernetes API, strictly."""
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@functools.cache
def _k8s_definitions() -> dict[str, Any]:
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    text = (folder / f"v{K8S_VERSION}-local-strict" / "_definitions.json").read_text()
    return json.loads(text)


def _k8s_validator(definition: str) -> jsonschema.protocols.Validator:
    defs = _k8s_definitions()
    registry = referencing.Registry().with_resource(
        _DEFS_ID, referencing.Resource.from_contents(defs)
    )
    schema = {"$ref": f"{_DEFS_ID}#/$defs/{definition}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _k8s_definition(client_type: str) -> str:
    """The Kubernetes API definition of a Python-client type name: V1Container ->
    io.k8s.api.core.v1.Container, K8sIoApiAppsV1DeploymentStrategy -> io.k8s.api.apps.v1...."""
    defs = _k8s_definitions()["$defs"]
    if client_type == "ResourceQuantity":
        return "io.k8s.apimachinery.pkg.api.resource.Quantity"
    full = re.fullmatch(r"K8sIoApi([A-Z][a-z]+)(V\d\w*?)([A-Z]\w*)", client_type)
    if full:
        group, version, kind = full.groups()
        return f"io.k8s.api.{group.lower()}.{version.lower()}.{kind}"
    version, kind = re.fullmatch(r"(V\d+(?:alpha\d+|beta\d+)?)(\w+)", client_type).groups()
    for prefix in ("io.k8s.api.core", "io.k8s.apimachinery.pkg.apis.meta"):
        key = f"{prefix}.{version.lower()}.{kind}"
        if key in defs:
            return key
    raise KeyError(f"no Kubernetes definition for {client_type}")


@functools.cache
def kserve_types() -> dict[str, dict[str, str]]:
    """KServe API type name -> {JSON field: type}, read (not imported) from the SDK wheel."""
    if not KSERVE_WHEEL.exists():
        raise MissingTool(
            f"{KSERVE_WHEEL} is not here (the kserve {KSERVE_VERSION} wheel from PyPI; "
            "`make deploy-tools` downloads it)"
        )
    types: dict[str, dict[str, str]] = {}
    with zipfile.ZipFile(KSERVE_WHEEL) as wheel:
        for name in wheel.namelist():
            if not re.fullmatch(r"kserve/models/v\w+\.py", name):
                continue
            for node in ast.parse(wheel.read(name)).body:
                if not isinstance(node, ast.ClassDef):
                    continue
                found = {
                    stmt.targets[0].id: ast.literal_eval(stmt.value)
                    for stmt in node.body
                    if isinstance(stmt, ast.Assign)
                    and isinstance(stmt.targets[0], ast.Name)
                    and stmt.targets[0].id in ("openapi_types", "attribute_map")
                }
                if len(found) == 2:
                    attrs = found["attribute_map"]
                    types[node.name] = {attrs[a]: t for a, t in found["openapi_types"].items()}
    return types


_PRIMITIVES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "bool": bool,
    "float": (int, float),
    "datetime": str,
    "object": object,
}


def kserve_errors(value: Any, type_name: str, where: str = "") -> list[str]:
    """What is wrong with `value` as the KServe (or Kubernetes) type `type_name`; [] when valid."""
    if m := re.fullmatch(r"list\[(.+)\]", type_name):
        if not isinstance(value, list):
            return [f"{where}: not a list"]
        return [e for i, v in enumerate(value) for e in kserve_errors(v, m[1], f"{where}[{i}]")]
    if m := re.fullmatch(r"dict\(str, (.+)\)", type_name):
        if not isinstance(value, dict):
            return [f"{where}: not a mapping"]
        return [e for k, v in value.items() for e in kserve_errors(v, m[1], f"{where}.{k}")]
    if type_name in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[type_name])
        if type_name == "int" and isinstance(value, bool):
            ok = False
        return [] if ok else [f"{where}: {value!r} is not {type_name}"]
    fields = kserve_types().get(type_name)
    if fields is None:  # a Kubernetes type inside a KServe one
        validator = _k8s_validator(_k8s_definition(type_name))
        return [
            f"{'.'.join([where, *map(str, e.path)])}: {e.message}"
            for e in validator.iter_errors(value)
        ]
    if not isinstance(value, dict):
        return [f"{where}: not a mapping ({type_name})"]
    errors = [f"{where}.{k}: unknown field of {type_name}" for k in value if k not in fields]
    for key, item in value.items():
        if key in fields:
            errors += kserve_errors(item, fields[key], f"{where}.{key}")
    return errors


KSERVE_KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
}
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


def validate_custom(doc: dict[str, Any]) -> list[str]:
    """Errors of a prometheus-operator or KServe object against its kind's types; [] if valid."""
    kserve = KSERVE_KINDS.get((doc["apiVersion"], doc["kind"]))
    if kserve is not None:
        return kserve_errors(doc, kserve, doc["kind"])
    assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["apiVersion"]
    assert doc["kind"] in PROMETHEUS_OPERATOR_KINDS, doc["kind"]
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, doc["kind"]).model_validate(doc)
    again = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return (
        []
        if again == doc
        else [f"{doc['kind']}: fields the CRD does not know: {_diff(doc, again)}"]
    )


def _diff(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths where `a` (the manifest) and `b` (its round trip) differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in a for p in _diff(a[k], b.get(k, _MISSING), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            p
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for p in _diff(x, y, f"{where}[{i}]")
        ]
    return [] if a == b else [where or "."]


_MISSING = object()
