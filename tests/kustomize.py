"""A small kustomize renderer, for testing deploy/kubernetes/ without a kustomize binary.

It renders the subset of kustomize that the manifests use, with kustomize's meaning: `resources`
(files, and directories holding a kustomization.yaml, rendered first), `patches` given by `path`
(strategic merge: maps merge key by key, `null` deletes, lists of objects with a `name` merge by
name, other lists are replaced), then `namespace` and `images`. Any other field or patch form
is refused, so an overlay cannot quietly use a feature this renderer would get wrong.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]

SUPPORTED = {"apiVersion", "kind", "resources", "patches", "namespace", "images"}
# Kinds without a namespace: kustomize's namespace transformer leaves them alone.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass",
                  "StorageClass", "CustomResourceDefinition"}


class KustomizeError(Exception):
    pass


def render(directory: Path) -> list[Object]:
    """The objects `kubectl kustomize directory` would print, in the order of `resources`."""
    path = directory / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    unsupported = set(kustomization) - SUPPORTED
    if unsupported:
        raise KustomizeError(f"{path}: not rendered by tests/kustomize.py: {sorted(unsupported)}")
    objects: list[Object] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        objects.extend(render(target) if target.is_dir() else load_objects(target))
    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise KustomizeError(f"{path}: only `patches: - path: FILE` is rendered here")
        for patch in load_objects(directory / patch_entry["path"]):
            _apply_patch(objects, patch, directory / patch_entry["path"])
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        for obj in objects:
            _set_image(obj, image)
    return objects


def load_objects(path: Path) -> list[Object]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def strategic_merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if isinstance(key, str) and key.startswith("$"):
                raise KustomizeError(f"patch directive {key} is not rendered here")
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = strategic_merge(base.get(key), value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        merged_list = list(base)
        names = [item["name"] for item in merged_list]
        for item in patch:
            if item["name"] in names:
                index = names.index(item["name"])
                merged_list[index] = strategic_merge(merged_list[index], item)
            else:
                merged_list.append(item)
                names.append(item["name"])
        return merged_list
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return all(isinstance(item, dict) and "name" in item for item in items)


def _apply_patch(objects: list[Object], patch: Object, source: Path) -> None:
    matches = [index for index, obj in enumerate(objects)
               if obj["kind"] == patch["kind"]
               and obj["metadata"]["name"] == patch["metadata"]["name"]]
    if len(matches) != 1:
        raise KustomizeError(f"{source}: patch for {patch['kind']}/{patch['metadata']['name']} "
                             f"matches {len(matches)} objects, not one")
    objects[matches[0]] = strategic_merge(objects[matches[0]], patch)


def _set_image(obj: Object, image: dict[str, str]) -> None:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
        name, tag = _split_image(container["image"])
        if name != image["name"]:
            continue
        name = image.get("newName", name)
        if "digest" in image:
            container["image"] = f"{name}@{image['digest']}"
        else:
            tag = image.get("newTag", tag)
            container["image"] = f"{name}:{tag}" if tag else name


def _split_image(reference: str) -> tuple[str, str | None]:
    name = reference.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        return name[: name.rindex(":")], name[name.rindex(":") + 1:]
    return name, None
