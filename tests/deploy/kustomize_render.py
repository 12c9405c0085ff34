"""A small offline renderer for the kustomize subset deploy/kustomize uses, so the manifests can be
validated without `kubectl`.

Supported, with kustomize's meaning: `resources` (files and directories with a kustomization),
`namespace`, `labels` (metadata labels only: `includeSelectors`/`includeTemplates` false),
`images` (`newName`, `newTag`, `digest`) and `patches` given by `path` as strategic merge patches,
matched by kind and name, including `$patch: delete` and `null` to remove a field. Lists merge by
their Kubernetes patch merge key (containers, env, volumes by name; volumeMounts by mountPath;
ports by containerPort or port); other lists are replaced. Anything else in a kustomization is
refused rather than ignored, so a manifest cannot silently depend on a feature this file lacks.
When `kubectl` is installed, tests/deploy/test_kustomize.py checks this renderer's output equals
`kubectl kustomize`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass", "PersistentVolume"}
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}


class UnsupportedError(ValueError):
    """The kustomization uses something this renderer does not implement."""


def render(directory: Path) -> list[Doc]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise UnsupportedError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        docs.extend(render(path) if path.is_dir() else load_docs(path))
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise UnsupportedError(f"{directory}: only `patches: - path:` is supported, got {patch}")
        for doc in load_docs(directory / patch["path"]):
            docs = apply_patch(docs, doc)
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    for entry in kustomization.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise UnsupportedError("labels with includeSelectors/includeTemplates")
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(entry["pairs"])
    for image in kustomization.get("images", []):
        for doc in docs:
            _set_image(doc, image)
    return docs


def load_docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def key(doc: Doc) -> tuple[str, str, str]:
    meta = doc["metadata"]
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def apply_patch(docs: list[Doc], patch: Doc) -> list[Doc]:
    matches = [
        d for d in docs if d["kind"] == patch["kind"] and d["metadata"]["name"] == patch["metadata"]["name"]
    ]
    if len(matches) != 1:
        raise UnsupportedError(f"patch {patch['kind']}/{patch['metadata']['name']} matches {len(matches)}")
    if patch.get("$patch") == "delete":
        return [d for d in docs if d is not matches[0]]
    merged = merge(matches[0], patch)
    return [merged if d is matches[0] else d for d in docs]


def merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for name, value in patch.items():
            if value is None:
                out.pop(name, None)
            elif name in out:
                out[name] = merge(out[name], value, name)
            else:
                out[name] = _strip_nulls(copy.deepcopy(value))
        return out
    if isinstance(base, list) and isinstance(patch, list):
        merge_key = _merge_key(field, base + patch)
        if merge_key is None:
            return _strip_nulls(copy.deepcopy(patch))
        out_list = copy.deepcopy(base)
        index = {item[merge_key]: i for i, item in enumerate(out_list)}
        for item in patch:
            if item[merge_key] in index:
                out_list[index[item[merge_key]]] = merge(out_list[index[item[merge_key]]], item)
            else:
                out_list.append(_strip_nulls(copy.deepcopy(item)))
        return out_list
    return _strip_nulls(copy.deepcopy(patch))


def _merge_key(field: str, items: list[Any]) -> str | None:
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    if field == "ports":
        return "containerPort" if all("containerPort" in i for i in items) else "port"
    return MERGE_KEYS.get(field)


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def pod_spec(doc: Doc) -> Doc | None:
    """The pod spec of a workload (Deployment, StatefulSet, Job, ...), None for other kinds."""
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    template = spec.get("template")
    return template.get("spec") if isinstance(template, dict) else None


def _set_image(doc: Doc, image: dict[str, str]) -> None:
    spec = pod_spec(doc)
    if spec is None:
        return
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        ref: str = container["image"]
        name, tag = _split_image(ref)
        if name != image["name"]:
            continue
        name = image.get("newName", name)
        if "digest" in image:
            container["image"] = f"{name}@{image['digest']}"
        else:
            container["image"] = f"{name}{':' + image['newTag'] if 'newTag' in image else tag}"


def _split_image(ref: str) -> tuple[str, str]:
    if "@" in ref:
        name, digest = ref.split("@", 1)
        return name, "@" + digest
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = ref.rsplit(":", 1)
        return name, ":" + tag
    return ref, ""
