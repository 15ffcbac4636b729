"""The one envelope every resource kind shares, and the registry of kinds."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from meshline.core.errors import FieldProblem, ValidationError
from meshline.core.labels import label_problems
from meshline.core.schema import NAME_HINT, NAME_RE, Spec, did_you_mean, parse_spec


@dataclass(frozen=True, order=True)
class ResourceKey:
    kind: str
    mesh: str  # "" for global kinds (Mesh)
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.mesh}/{self.name}" if self.mesh else f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Resource:
    kind: str
    name: str
    spec: Spec
    mesh: str = ""
    # Opaque outside the store: compare two for equality only (the store may be a remote API
    # whose versions are not integers). 0 means "not stored yet".
    version: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)  # see core.labels

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.mesh, self.name)

    def with_version(self, version: int, now: float | None = None) -> Resource:
        now = time.time() if now is None else now
        return replace(self, version=version, created_at=self.created_at or now, updated_at=now)

    def with_labels(self, labels: Mapping[str, str]) -> Resource:
        return replace(self, labels=dict(labels))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.mesh:
            out["mesh"] = self.mesh
        out["name"] = self.name
        if self.labels:
            out["labels"] = dict(sorted(self.labels.items()))
        out["spec"] = self.spec.to_json()
        if self.version:
            out["version"] = self.version
            out["createdAt"] = self.created_at
            out["updatedAt"] = self.updated_at
        return out


SpecT = TypeVar("SpecT", bound=Spec)


def spec_as(res: Resource, kind: type[SpecT]) -> SpecT:
    """``res.spec`` typed as ``kind``, for a kind's own validators and columns (the registry
    decodes each kind with its spec class, so anything else is a programming error)."""
    spec = res.spec
    if not isinstance(spec, kind):
        raise TypeError(f"{res.key}: spec is {type(spec).__name__}, not {kind.__name__}")
    return spec


# Extra, cross-field checks a kind can add on top of its schema.
Validator = Callable[[Resource], list[FieldProblem]]


@dataclass(frozen=True)
class KindInfo:
    kind: str  # "Dataplane": what users write in `kind:`
    plural: str  # "dataplanes": used in URLs and by `meshline get`
    spec: type[Spec]
    summary: str
    mesh_scoped: bool = True
    is_policy: bool = False
    # Kept by the control plane for itself (CA keys, issued tokens): not served by the
    # resource API, not in the OpenAPI document, never written by users.
    internal: bool = False
    aliases: tuple[str, ...] = ()
    validators: tuple[Validator, ...] = ()
    # Columns for `meshline get` tables: header -> value getter.
    columns: Mapping[str, Callable[[Resource], str]] = field(default_factory=dict)


class KindRegistry:
    """Looks kinds up by name, plural or alias (case-insensitive)."""

    def __init__(self, kinds: Iterable[KindInfo]) -> None:
        self._by_kind: dict[str, KindInfo] = {}
        self._lookup: dict[str, KindInfo] = {}
        for info in kinds:
            if info.kind in self._by_kind:
                raise ValueError(f"kind {info.kind} registered twice")
            self._by_kind[info.kind] = info
            for key in (info.kind, info.plural, *info.aliases):
                self._lookup[key.lower()] = info

    def __iter__(self) -> Any:
        return iter(self._by_kind.values())

    def find(self, name: str) -> KindInfo | None:
        """A kind users may name (internal kinds are not found)."""
        info = self._lookup.get(name.lower())
        return None if info is None or info.internal else info

    def public(self) -> list[KindInfo]:
        return [k for k in self._by_kind.values() if not k.internal]

    def get(self, name: str) -> KindInfo:
        info = self.find(name)
        hidden = self._lookup.get(name.lower())
        if info is None and hidden is not None:
            raise ValidationError([FieldProblem("kind", f"{hidden.kind} is managed by the control plane itself;"
                                                        " it cannot be written or read through the API")])
        if info is None:
            known = sorted(k.kind for k in self.public())
            guess = did_you_mean(name, known)
            hint = f"did you mean {guess}? " if guess else ""
            raise ValidationError([FieldProblem("kind", f"unknown kind '{name}'; {hint}known kinds: {', '.join(known)}")])
        return info

    def exact(self, name: str) -> KindInfo:
        """The kind a document's ``kind:`` names. One rule, as in Kubernetes: a document
        spells its kind exactly (``HTTPRoute``); plurals, aliases and any case are for the
        command line (``meshline get httproutes``)."""
        info = self._by_kind.get(name)
        if info is not None and not info.internal:
            return info
        loose = self.find(name)
        if loose is not None:
            raise ValidationError([FieldProblem(
                "kind", f"'{name}' is not how a document names a kind; write kind: {loose.kind}"
                " (documents spell kinds exactly; plurals and other cases are for `meshline get`)")])  # fmt: skip
        return self.get(name)

    def decode(self, doc: object) -> Resource:
        """Turn one user document (parsed YAML/JSON) into a validated Resource."""
        if not isinstance(doc, Mapping):
            raise ValidationError([FieldProblem("", "a resource must be a mapping with kind, name and spec")])
        problems: list[FieldProblem] = []
        kind_name = doc.get("kind")
        if not isinstance(kind_name, str) or not kind_name:
            known = ", ".join(sorted(k.kind for k in self.public()))
            raise ValidationError([FieldProblem("kind", f"is missing; every document needs one of: {known}")])
        info = self.exact(kind_name)
        name = doc.get("name")
        if name is None:
            problems.append(FieldProblem("name", "is required"))
        elif not isinstance(name, str) or not NAME_RE.match(name):
            problems.append(FieldProblem("name", NAME_HINT))
        mesh = doc.get("mesh")
        if info.mesh_scoped:
            if mesh is None:
                problems.append(FieldProblem("mesh", f"is required for {info.kind} (e.g. mesh: default)"))
            elif not isinstance(mesh, str) or not NAME_RE.match(mesh):
                problems.append(FieldProblem("mesh", NAME_HINT))
        elif mesh not in (None, ""):
            problems.append(FieldProblem("mesh", f"{info.kind} is not inside a mesh; remove this field"))
        unknown = set(doc) - {"kind", "mesh", "name", "labels", "spec", "version", "createdAt", "updatedAt"}
        for extra in sorted(unknown):
            guess = did_you_mean(str(extra), ["kind", "mesh", "name", "labels", "spec"])
            problems.append(FieldProblem(
                extra, (f"is not a known field; did you mean '{guess}'?" if guess else "is not a known field")
                + "; a resource has kind, mesh, name, labels and spec"))  # fmt: skip
        labels = doc.get("labels") or {}
        problems.extend(label_problems(labels))
        label = f"{info.kind} {name}" if isinstance(name, str) else info.kind
        try:
            spec = parse_spec(info.spec, doc.get("spec"), context="")
        except ValidationError as err:
            problems.extend(err.problems)
            spec = None
        if problems or spec is None:
            raise ValidationError(problems, context=label)
        version = doc.get("version", 0)
        res = Resource(
            kind=info.kind,
            name=str(name),
            spec=spec,
            mesh=str(mesh or "") if info.mesh_scoped else "",
            version=version if isinstance(version, int) else 0,
            labels=dict(labels) if isinstance(labels, Mapping) else {},
        )
        for check in info.validators:
            problems.extend(check(res))
        if problems:
            raise ValidationError(problems, context=label)
        return res

    def load(self, stored: Mapping[str, Any]) -> Resource:
        """Rebuild a Resource from the store's JSON (already validated when written)."""
        info = self._by_kind[stored["kind"]]
        return Resource(
            kind=info.kind,
            name=stored["name"],
            mesh=stored.get("mesh") or "",
            spec=info.spec.model_validate(stored["spec"]),
            version=int(stored.get("version", 0)),
            created_at=float(stored.get("createdAt", 0.0)),
            updated_at=float(stored.get("updatedAt", 0.0)),
            labels=dict(stored.get("labels") or {}),
        )
