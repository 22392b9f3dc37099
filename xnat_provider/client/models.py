"""Small typed values the client returns. All are dataclasses with a JSON-safe ``to_dict`` so that operators
can hand them to XCom as they are (an :class:`AliasToken`'s ``to_dict`` leaves its secret out)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

# XNAT's prearchive statuses (PrearcUtils.PrearcStatus): READY, RECEIVING, RECEIVING_INTERRUPT, BUILDING, ARCHIVING,
# CONFLICT, ERROR, DELETING, MOVING, SEPARATING; QUEUED_X means queued, _X means running (locked).


def status_is_busy(status: str) -> bool:
    """True while XNAT is still working on a session: receiving, building, queued or running an operation."""
    return status.startswith(("QUEUED_", "_")) or status in (
        "RECEIVING", "RECEIVING_INTERRUPT", "BUILDING", "ARCHIVING", "DELETING", "MOVING", "SEPARATING")


def status_is_failed(status: str) -> bool:
    return status in ("CONFLICT", "ERROR")


def status_is_locked(status: str) -> bool:
    """True for the ``_X`` statuses: an operation runs on the row and holds its lock (``PrearcDatabase.isLocked``
    reads the values of ``PrearcUtils.inProcessStatusMap``, every ``_X`` status). XNAT ignores rebuild, move and
    delete requests on a locked row (it answers 200 with the row unchanged) and refuses to archive it (403).
    ``QUEUED_X``, READY, ERROR and the plain BUILDING, ARCHIVING... are not locked."""
    return status.startswith("_")


class _Serialisable:
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)  # type: ignore[call-overload]
        for k, v in out.items():
            if isinstance(v, datetime):
                out[k] = v.isoformat()
        return out


@dataclass(frozen=True)
class AliasToken(_Serialisable):
    """An XNAT alias token: log in with ``alias`` as the user and ``secret`` as the password."""

    alias: str
    secret: str = field(repr=False)
    user: str
    expires: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """Alias, user and expiry: never the secret, which must not reach an XCom or a log in clear."""
        out = super().to_dict()
        out.pop("secret", None)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AliasToken:
        ms = data.get("estimatedExpirationTime")
        expires = datetime.fromtimestamp(int(ms) / 1000, tz=UTC) if ms not in (None, "") else None
        return cls(alias=str(data["alias"]), secret=str(data["secret"]), user=str(data.get("xdatUserId", "")),
                   expires=expires)


@dataclass(frozen=True)
class PrearchiveSession(_Serialisable):
    """One prearchive row. ``uri`` is the ``/data/prearchive/projects/P/TIMESTAMP/FOLDER`` path."""

    project: str
    timestamp: str
    folder: str
    name: str
    subject: str
    study_uid: str
    status: str
    lastmod: str
    uploaded: str
    scan_date: str = ""
    autoarchive: str = ""

    @property
    def uri(self) -> str:
        return f"/data/prearchive/projects/{self.project}/{self.timestamp}/{self.folder}"

    @property
    def busy(self) -> bool:
        return status_is_busy(self.status)

    @property
    def locked(self) -> bool:
        return status_is_locked(self.status)

    @property
    def failed(self) -> bool:
        return status_is_failed(self.status)

    @classmethod
    def from_row(cls, row: dict[str, str]) -> PrearchiveSession:
        return cls(project=row.get("project", ""), timestamp=row.get("timestamp", ""),
                   folder=row.get("folderName") or row.get("name", ""), name=row.get("name", ""),
                   subject=row.get("subject", ""), study_uid=row.get("tag", ""), status=row.get("status", ""),
                   lastmod=row.get("lastmod", ""), uploaded=row.get("uploaded", ""),
                   scan_date=row.get("scan_date", ""), autoarchive=row.get("autoarchive", ""))


@dataclass(frozen=True)
class SessionRef(_Serialisable):
    """Where an imported or archived session is: in the prearchive or in the archive."""

    uri: str
    project: str
    subject: str = ""
    label: str = ""
    timestamp: str = ""
    in_prearchive: bool = False

    @classmethod
    def parse(cls, uri: str) -> SessionRef:
        """Parse one line of XNAT's ``text/uri-list`` answer (``/data/prearchive/...`` or ``/data/archive/...``)."""
        parts = [p for p in uri.strip().split("/") if p]
        if parts[:1] == ["data"]:
            parts = parts[1:]
        if parts[:2] == ["prearchive", "projects"] and len(parts) >= 5:
            return cls(uri="/data/" + "/".join(parts), project=parts[2], label=parts[4], timestamp=parts[3],
                       in_prearchive=True)
        if parts[:2] == ["archive", "projects"] and len(parts) >= 7:
            return cls(uri="/data/" + "/".join(parts), project=parts[2], subject=parts[4], label=parts[6])
        raise ValueError(f"not an XNAT session URI: {uri!r}")


@dataclass(frozen=True)
class Experiment(_Serialisable):
    """An archived experiment. ``insert_date`` is XNAT's ``2024-01-01 12:00:00.123`` text, from a listing ('' when
    read from the object document, as ``get_experiment`` and ``find_experiment`` do)."""

    id: str
    label: str
    project: str
    subject_id: str
    subject_label: str
    xsi_type: str
    date: str = ""
    uri: str = ""
    insert_date: str = ""


@dataclass(frozen=True)
class Scan(_Serialisable):
    id: str
    type: str
    series_description: str
    xsi_type: str
    quality: str = ""
    uri: str = ""


@dataclass(frozen=True)
class RemoteFile(_Serialisable):
    """A file as XNAT lists it: ``path`` is relative to its resource, ``digest`` the MD5 ('' if unknown)."""

    path: str
    size: int | None
    digest: str
    uri: str
    resource: str = ""


@dataclass
class Manifest(_Serialisable):
    """What a transfer did, file by file: the XCom an operator returns."""

    files: list[dict[str, Any]] = field(default_factory=list)
    bytes: int = 0
    transferred: int = 0
    skipped: int = 0

    def add(self, path: str, size: int, md5: str, skipped: bool, **extra: Any) -> None:
        self.files.append({"path": path, "size": size, "md5": md5, "skipped": skipped, **extra})
        self.bytes += size
        if skipped:
            self.skipped += 1
        else:
            self.transferred += 1
