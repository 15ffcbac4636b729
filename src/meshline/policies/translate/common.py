"""What the Gateway API and SMI translators share: the Kubernetes envelope, service references
and the version-subset naming convention.

Conventions (documented in docs/policies/routing.md):

* ``metadata.name`` becomes the resource name; the mesh is the ``meshline.io/mesh``
  annotation, else ``metadata.namespace``, else ``default``.
* A backend named like a known service, or like a parent service, is that whole service.
  Otherwise a name ``<parent>-<value>`` (``orders-v2`` under parent ``orders``) is the subset
  of ``<parent>`` with tag ``version=<value>``; the ``meshline.io/subset-tag`` annotation
  names another tag, or turns the convention off with ``none``. Any other name is a service
  of its own (maybe not deployed yet).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshline.core.dataplane import TAG_RE
from meshline.core.errors import FieldProblem, ValidationError
from meshline.core.resource import KindRegistry, Resource
from meshline.core.schema import NAME_HINT, NAME_RE

MESH_ANNOTATION = "meshline.io/mesh"
SUBSET_TAG_ANNOTATION = "meshline.io/subset-tag"
DEFAULT_SUBSET_TAG = "version"
NO_SUBSETS = "none"  # subset-tag value: every backend name is a service

# mesh -> {service: protocol} for the services that have instances now.
KnownServices = Callable[[str], Mapping[str, str]]


@dataclass
class Translation:
    """One foreign document being translated: its identity, and the problems found so far."""

    doc: Mapping[str, Any]
    known_services: KnownServices
    problems: list[FieldProblem] = field(default_factory=list)
    name: str = ""
    mesh: str = "default"
    namespace: str = ""
    subset_tag: str = DEFAULT_SUBSET_TAG

    @property
    def label(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.doc.get('kind')} {where}{self.name or '?'} ({self.doc.get('apiVersion')})"

    def refuse(self, path: str, message: str) -> None:
        self.problems.append(FieldProblem(path, message))

    def read_metadata(self) -> None:
        meta = self.doc.get("metadata")
        if not isinstance(meta, Mapping):
            self.refuse("metadata", "is required, with at least a name")
            return
        name = meta.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            self.refuse("metadata.name", f"'{name}' cannot be a Meshline name: it {NAME_HINT}; rename the resource")
        else:
            self.name = name
        namespace = meta.get("namespace")
        self.namespace = namespace if isinstance(namespace, str) else ""
        annotations = meta.get("annotations") or {}
        mesh = annotations.get(MESH_ANNOTATION) or self.namespace or "default"
        if not isinstance(mesh, str) or not NAME_RE.match(mesh):
            where = f"metadata.annotations.{MESH_ANNOTATION}" if annotations.get(MESH_ANNOTATION) else "metadata.namespace"
            self.refuse(where, f"'{mesh}' cannot be a mesh name; set the {MESH_ANNOTATION} annotation to a mesh")
        else:
            self.mesh = mesh
        tag = annotations.get(SUBSET_TAG_ANNOTATION, DEFAULT_SUBSET_TAG)
        if tag == NO_SUBSETS:
            self.subset_tag = ""
        elif not isinstance(tag, str) or not TAG_RE.match(tag) or tag == "service":
            self.refuse(f"metadata.annotations.{SUBSET_TAG_ANNOTATION}", f"'{tag}' is not a usable tag name")
        else:
            self.subset_tag = tag

    def same_namespace(self, ref: Mapping[str, Any], path: str) -> bool:
        ns = ref.get("namespace")
        if ns not in (None, "", self.namespace):
            self.refuse(
                f"{path}.namespace",
                f"refers to namespace '{ns}', but this route maps to mesh '{self.mesh}' and Meshline cannot"
                " follow references across namespaces; move the route next to the service or drop the namespace",
            )
            return False
        return True

    def service_name(self, value: object, path: str) -> str | None:
        if not isinstance(value, str) or not NAME_RE.match(value):
            self.refuse(path, f"'{value}' cannot be a Meshline service name: it {NAME_HINT}")
            return None
        return value

    def backend(self, name: str, parents: Sequence[str]) -> tuple[str, dict[str, str]]:
        """A backend name -> (service, subset tags), by the convention in this module's docstring."""
        known = self.known_services(self.mesh)
        if name in parents or name in known or not self.subset_tag:
            return name, {}
        for parent in sorted(parents, key=len, reverse=True):
            value = name[len(parent) + 1 :]
            if name.startswith(parent + "-") and TAG_RE.match(value):
                return parent, {self.subset_tag: value}
        return name, {}

    def finish(self, kinds: KindRegistry, native: dict[str, Any]) -> list[Resource]:
        """Decode the native document; problems found on the way are reported together."""
        if self.problems:
            raise ValidationError(self.problems, context=self.label)
        try:
            return [kinds.decode(native)]
        except ValidationError as err:
            problems = [FieldProblem(p.path, f"{p.message} (in the translated {native['kind']})") for p in err.problems]
            raise ValidationError(problems, context=self.label) from None


def as_list(value: object, path: str, t: Translation) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        t.refuse(path, "must be a list")
        return []
    return value


def as_mapping(value: object, path: str, t: Translation) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        t.refuse(path, "must be a mapping")
        return {}
    return value
