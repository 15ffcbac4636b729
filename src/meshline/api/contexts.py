"""Named CLI contexts: which control plane the CLI talks to, with which CA and which token.

Like a kubeconfig (or kumactl's control-plane list), one YAML file per user holds named
contexts and the current one::

    current: local
    contexts:
    - name: local
      api: http://127.0.0.1:15681
      tokenFile: /var/lib/meshline/admin.token
      caFile: /var/lib/meshline/cp-ca.pem
      dataDir: /var/lib/meshline

The file holds paths to the token and CA, not their text: the control plane renews its
admin token in place, and a token never sits in a second file. ``meshline control-plane``
and ``meshline up`` write a context for the user who runs them and make it current;
``meshline context add|use|list|delete`` manage the rest.

Which control plane the CLI talks to (:func:`resolve`), first match wins:

1. ``--context NAME`` / ``MESHLINE_CONTEXT``;
2. ``--api URL`` / ``MESHLINE_API`` (with the token and CA of a context for that URL, if any);
3. the current context;
4. ``http://127.0.0.1:15681``.

A :class:`Connection` remembers where each part came from, so an error can say which
control plane, which file and which token were used.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from meshline.core.datadir import write_private
from meshline.core.errors import MeshlineError
from meshline.core.locations import DEFAULT_API_PORT, is_local

CONFIG_ENV = "MESHLINE_CONFIG"
CONTEXT_ENV = "MESHLINE_CONTEXT"
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_API_PORT}"
LOCAL = "local"


def config_path() -> Path:
    """$MESHLINE_CONFIG, else $XDG_CONFIG_HOME/meshline/config.yaml, else ~/.config/meshline/config.yaml."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "meshline" / "config.yaml"


def _tilde(path: Path) -> str:
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home):] if home != "/" and text.startswith(home + "/") else text


@dataclass(frozen=True)
class Context:
    name: str
    api: str
    token_file: str | None = None
    ca_file: str | None = None
    data_dir: str | None = None

    def to_doc(self) -> dict[str, str]:
        doc = {"name": self.name, "api": self.api}
        for key, value in (("tokenFile", self.token_file), ("caFile", self.ca_file), ("dataDir", self.data_dir)):
            if value:
                doc[key] = value
        return doc


@dataclass
class Contexts:
    path: Path
    current: str | None = None
    items: dict[str, Context] = field(default_factory=dict)

    def get(self, name: str) -> Context:
        if name not in self.items:
            known = ", ".join(sorted(self.items)) or "none yet"
            raise MeshlineError(
                f"no context '{name}' in {_tilde(self.path)} (known: {known}); see `meshline context list`,"
                " or add one with `meshline context add NAME --api URL --token-file FILE`"
            )
        return self.items[name]

    def for_url(self, url: str) -> Context | None:
        """The context for ``url`` (the current one first if several match)."""
        want = normalize(url)
        matches = [c for c in self.items.values() if normalize(c.api) == want]
        for c in matches:
            if c.name == self.current:
                return c
        return matches[0] if matches else None


def normalize(url: str) -> str:
    url = url.strip().rstrip("/")
    return url.replace("://localhost:", "://127.0.0.1:")


def _parse(path: Path, text: str) -> Contexts:
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise MeshlineError(f"{_tilde(path)} is not valid YAML ({err}); fix or delete it") from None
    if not isinstance(doc, dict):
        raise MeshlineError(f"{_tilde(path)} must hold a mapping with `current` and `contexts`; fix or delete it")
    out = Contexts(path, current=doc.get("current") or None)
    for i, item in enumerate(doc.get("contexts") or []):
        if not isinstance(item, dict) or not item.get("name") or not item.get("api"):
            raise MeshlineError(f"{_tilde(path)}: contexts[{i}] needs a name and an api URL; fix or delete it")
        out.items[str(item["name"])] = Context(
            name=str(item["name"]),
            api=str(item["api"]),
            token_file=item.get("tokenFile") or None,
            ca_file=item.get("caFile") or None,
            data_dir=item.get("dataDir") or None,
        )
    return out


def load(path: Path | None = None) -> Contexts:
    path = path or config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Contexts(path)
    except OSError as err:
        raise MeshlineError(f"cannot read {_tilde(path)}: {err.strerror}") from None
    return _parse(path, text)


def _dump(c: Contexts) -> str:
    doc: dict[str, Any] = {"current": c.current, "contexts": [x.to_doc() for x in c.items.values()]}
    return yaml.safe_dump(doc, sort_keys=False)


@contextlib.contextmanager
def editing(path: Path | None = None) -> Iterator[Contexts]:
    """Read, change and write back the config under a lock (a control plane and `meshline
    up` may start at the same time); written 0600 like a kubeconfig."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        contexts = load(path)
        yield contexts
        write_private(path, _dump(contexts))


def local_context_name(api_url: str) -> str:
    """``local`` for the default API port, ``local-<port>`` otherwise, so two control planes
    on one host get two contexts."""
    port = api_url.rsplit(":", 1)[-1].rstrip("/")
    return LOCAL if port == str(DEFAULT_API_PORT) else f"{LOCAL}-{port}"


def remember_local(
    api_url: str, data_dir: Path, token_file: Path | None, ca_file: Path | None, path: Path | None = None
) -> tuple[str, Path]:
    """What a control plane started by this user writes: its context, made current."""
    name = local_context_name(api_url)
    ctx = Context(
        name=name,
        api=api_url,
        token_file=str(token_file) if token_file else None,
        ca_file=str(ca_file) if ca_file and api_url.startswith("https://") else None,
        data_dir=str(data_dir),
    )
    with editing(path) as contexts:
        contexts.items[name] = ctx
        contexts.current = name
        return name, contexts.path


# -- resolving a connection -------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """Where the CLI sends its calls and with what, and where each came from."""

    url: str
    url_source: str
    token: str | None = None
    token_source: str = "no token"
    verify: bool | str = True
    context: str | None = None
    config: Path | None = None

    def describe(self) -> str:
        return f"control plane {self.url} ({self.url_source}), {self.token_source}"

    def unauthorized_fix(self) -> str:
        if self.token is None:
            return (
                "pass --token / MESHLINE_TOKEN, or choose a context that has a token file"
                " (`meshline context list`, `meshline context use NAME`)"
            )
        if self.context is not None:
            return (
                f"is context '{self.context}' the control plane you mean? (`meshline context list`);"
                " a control plane rewrites its admin token file when it starts, or pass --token"
            )
        return "pass a token this control plane issued (--token / MESHLINE_TOKEN), or choose a context with --context"

    def unreachable_fix(self) -> str:
        return (
            "start it (`meshline control-plane`), or choose another control plane with --context NAME,"
            " `meshline context use NAME` or --api URL (`meshline context list` shows them)"
        )


def _read_token(path: str, what: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except FileNotFoundError:
        raise MeshlineError(f"the token file {path} ({what}) does not exist") from None
    except PermissionError:
        raise MeshlineError(
            f"cannot read the token file {path} ({what}): permission denied; run as its owner or pass --token"
        ) from None


def _legacy_admin_token() -> tuple[str, str] | None:
    """Before contexts: the admin token a control plane on this host wrote in its data dir."""
    dirs = [os.environ.get("MESHLINE_DATA_DIR"), str(Path.home() / ".meshline")]
    for d in dirs:
        path = os.path.join(d, "admin.token") if d else ""
        if path and os.path.exists(path):
            try:
                text = Path(path).read_text().strip()
            except OSError:  # another user's control plane: not ours to use
                continue
            if text:
                return text, path
    return None


def _legacy_ca(url: str) -> str | None:
    for d in (os.environ.get("MESHLINE_DATA_DIR"), str(Path.home() / ".meshline")):
        path = os.path.join(d, "cp-ca.pem") if d else ""
        if path and os.path.exists(path):
            return path
    return None


def resolve(
    api: str | None = None,
    token: str | None = None,
    context: str | None = None,
    *,
    path: Path | None = None,
    use_context_token: bool = True,
) -> Connection:
    """The connection for the given flags (``None``: not given) and the environment.

    ``use_context_token=False`` (the agent): a context gives only the URL and CA, never its
    admin token."""
    contexts = load(path)
    context = context or os.environ.get(CONTEXT_ENV) or None
    where = _tilde(contexts.path)
    chosen: Context | None
    matched_by_url = False
    if context:
        chosen = contexts.get(context)
        url, url_source = chosen.api, f"context '{chosen.name}' in {where}"
    elif api or os.environ.get("MESHLINE_API"):
        url = api or os.environ["MESHLINE_API"]
        chosen = contexts.for_url(url)
        matched_by_url = True
        url_source = "--api / MESHLINE_API" + (f", context '{chosen.name}'" if chosen else "")
    elif contexts.current and contexts.current in contexts.items:
        chosen = contexts.items[contexts.current]
        url, url_source = chosen.api, f"current context '{chosen.name}' in {where}"
    else:
        chosen = contexts.for_url(DEFAULT_URL)
        url = DEFAULT_URL
        url_source = "the default; no current context in " + where
    url = url.rstrip("/")
    conn = Connection(url=url, url_source=url_source, context=chosen.name if chosen else None,
                      config=contexts.path)  # fmt: skip
    # the token
    env_token = os.environ.get("MESHLINE_TOKEN")
    env_file = os.environ.get("MESHLINE_TOKEN_FILE")
    if token:
        conn = replace(conn, token=token, token_source="the token from --token")
    elif env_token:
        conn = replace(conn, token=env_token, token_source="the token from MESHLINE_TOKEN")
    elif env_file and os.path.exists(env_file):
        conn = replace(conn, token=_read_token(env_file, "MESHLINE_TOKEN_FILE"),
                       token_source=f"the token in {env_file} (MESHLINE_TOKEN_FILE)")  # fmt: skip
    elif use_context_token and chosen is not None and chosen.token_file and matched_by_url \
            and not os.path.exists(chosen.token_file):
        # --api matched a context left by a control plane that is gone (its port reused since):
        # not the user's choice, so its missing token is no error; a 401 then says what to do
        conn = replace(conn, token_source=f"no token (context '{chosen.name}' has no {chosen.token_file} any more)")
    elif use_context_token and chosen is not None and chosen.token_file:
        conn = replace(conn, token=_read_token(chosen.token_file, f"context '{chosen.name}'"),
                       token_source=f"the token in {chosen.token_file} (context '{chosen.name}')")  # fmt: skip
    elif use_context_token and chosen is None and is_local(url):
        legacy = _legacy_admin_token()
        if legacy is not None:
            conn = replace(conn, token=legacy[0], token_source=f"the token in {legacy[1]} (no context for {url})")
    # the CA for an https API
    explicit_ca = os.environ.get("MESHLINE_CA_FILE")
    if explicit_ca:
        conn = replace(conn, verify=explicit_ca)
    elif chosen is not None and chosen.ca_file:
        conn = replace(conn, verify=chosen.ca_file)
    elif url.startswith("https://") and is_local(url):
        conn = replace(conn, verify=_legacy_ca(url) or True)
    return conn
