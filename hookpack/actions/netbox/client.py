"""NetBox over pynetbox: a session with a timeout, clean errors, writes that a dry run records."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from hookpack.errors import ActionError, ConfigError

if TYPE_CHECKING:
    from hookpack.action import Redactor

TAG = "hookpack"  # slug of the tag marking what hookpack created in NetBox


class NetBoxUnavailable(ActionError):
    """NetBox could not be asked (refused, timeout, HTTP error, bad token)."""


def connect(settings: Mapping[str, Any], redactor: Redactor, timeout: float) -> Any:
    """A pynetbox API whose every request has ``timeout`` (requests has no default one)."""
    if not settings["url"]:
        raise ConfigError("no url set", key="netbox.url")
    if timeout <= 0:
        raise NetBoxUnavailable("no time left before the hook's deadline")
    from hookpack.config import read_secret

    token = read_secret(Path(settings["token_file"]))
    redactor.redact(token)
    import pynetbox
    import requests
    from requests.adapters import HTTPAdapter

    class _TimeoutAdapter(HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            kwargs["timeout"] = timeout
            return super().send(request, **kwargs)

    session = requests.Session()
    session.trust_env = False  # no proxies or netrc from the environment
    adapter = _TimeoutAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    api = pynetbox.api(settings["url"], token=token)
    api.http_session = session
    return api


def guard(what: str, call: Callable[[], Any]) -> Any:
    """Run one NetBox call; network and HTTP errors become a clean NetBoxUnavailable."""
    import pynetbox
    import requests

    try:
        return call()
    except requests.Timeout:
        raise NetBoxUnavailable(f"NetBox did not answer in time ({what})") from None
    except requests.RequestException as err:
        raise NetBoxUnavailable(f"NetBox unreachable ({what}): "
                                f"{type(err).__name__}") from None
    except pynetbox.RequestError as err:
        status = getattr(err.req, "status_code", "?")
        raise NetBoxUnavailable(f"NetBox refused {what}: HTTP {status}: "
                                f"{str(err.error)[:160]}") from None
    except (pynetbox.ContentError, ValueError) as err:
        raise NetBoxUnavailable(f"NetBox answered {what} with something unexpected: "
                                f"{str(err)[:120]}") from None


def listed(what: str, endpoint: Any, **filters: Any) -> list[Any]:
    """Every record of ``endpoint`` matching ``filters`` (all pages)."""
    return list(guard(what, lambda: list(endpoint.filter(**filters))))


def find_cluster(api: Any, name: str) -> int:
    """The id of NetBox's cluster ``name``; a clear error when it has none."""
    found = listed("cluster lookup", api.virtualization.clusters, name=name)
    if not found:
        raise ActionError(f"NetBox has no cluster named {name!r}; create it or set "
                          "netbox.cluster")
    return int(found[0].id)


def find_vm(api: Any, name: str, cluster_id: int | None) -> Any:
    """The VM named ``name`` in the cluster (VM names are unique per cluster only), or None."""
    filters: dict[str, Any] = {"name": name}
    if cluster_id is not None:
        filters["cluster_id"] = cluster_id
    found = listed(f"lookup of {name}", api.virtualization.virtual_machines, **filters)
    return found[0] if found else None


def ref_id(value: Any) -> Any:
    """The id of a nested record (or the value itself when it is already an id)."""
    return getattr(value, "id", value)


def owned(record: Any) -> bool:
    """Whether hookpack created ``record`` (it carries hookpack's tag)."""
    return any(getattr(t, "slug", None) == TAG for t in (getattr(record, "tags", None) or []))


class Writes:
    """NetBox's writes, each one line of the report; a dry run only records the lines.

    In a dry run a create returns a placeholder whose id is None: the caller reads
    nothing under an object that does not exist yet.
    """

    def __init__(self, api: Any, *, dry_run: bool = False) -> None:
        self.api = api
        self.dry_run = dry_run
        self.lines: list[str] = []
        self._tag: int | None = None
        self._version: tuple[int, ...] | None = None

    def version(self) -> tuple[int, ...]:
        """NetBox's API version, e.g. (4, 7), asked once (() when it does not say)."""
        if self._version is None:
            text = str(guard("version lookup", lambda: self.api.version) or "")
            try:
                self._version = tuple(int(part) for part in text.split(".")[:2])
            except ValueError:
                self._version = ()
        return self._version

    def tag(self) -> int | None:
        """The id of hookpack's tag, created on first use (None in a dry run without it)."""
        if self._tag is None:
            tags = self.api.extras.tags
            found = listed("tag lookup", tags, slug=TAG)
            if found:
                self._tag = int(found[0].id)
            elif not self.dry_run:
                self._tag = int(guard("tag creation",
                                      partial(tags.create, name=TAG, slug=TAG)).id)
        return self._tag

    def create(self, line: str, endpoint: Any, fields: Mapping[str, Any]) -> Any:
        self.lines.append(line)
        if self.dry_run:
            return SimpleNamespace(id=None, tags=[], **fields)
        return guard(line, partial(endpoint.create, **fields, tags=[self.tag()]))

    def update(self, line: str | None, record: Any, diff: Mapping[str, Any]) -> None:
        """Change ``record``; ``line`` None: a step of another change, not reported."""
        if line:
            self.lines.append(line)
        if not self.dry_run:
            guard(line or f"update of {', '.join(sorted(diff))}",
                  partial(record.update, dict(diff)))

    def delete(self, line: str, record: Any) -> None:
        self.lines.append(line)
        if not self.dry_run:
            guard(line, record.delete)
