"""Archive lookups and creation, custom fields, alias tokens and the DICOM dump: the small calls."""

from __future__ import annotations

from typing import Any

from .errors import XnatBadInputError, XnatNotFoundError, XnatPermissionError, XnatServerError
from .models import AliasToken, Experiment, Scan
from .protocol import (
    base_path,
    check_label,
    custom_field_param,
    experiment_lookup,
    experiment_path_lookup,
    experiments_lookup,
    fields_from_item,
    fields_lookup,
    first_item,
    json_answer,
    or_none,
    q,
    result_rows,
    scans_from_rows,
    scans_lookup,
)
from .transport import XnatTransport

SESSION_TYPES = ("xnat:mrSessionData", "xnat:ctSessionData", "xnat:petSessionData", "xnat:otherDicomSessionData")


class ArchiveMixin:
    transport: XnatTransport

    # ---- reading -----------------------------------------------------------------------------------
    def _rows(self, path: str, **params: Any) -> list[dict[str, str]]:
        resp = self.transport.request("GET", path, params={"format": "json", **params})
        return result_rows(resp.content, "GET", path)

    def _item(self, path: str) -> dict[str, Any]:
        resp = self.transport.request("GET", path, params={"format": "json"})
        return first_item(resp.content, "GET", path)

    def list_projects(self) -> list[str]:
        return [r["ID"] for r in self._rows("/data/projects")]

    def project_exists(self, project: str) -> bool:
        try:
            self._item(base_path(project))
        except XnatNotFoundError:
            return False
        return True

    def list_subjects(self, project: str) -> list[dict[str, str]]:
        return [{"id": r["ID"], "label": r["label"]} for r in self._rows(f"{base_path(project)}/subjects")]

    def list_experiments(self, project: str, subject: str | None = None) -> list[Experiment]:
        """A project's (or a subject's) experiments, in the server's order; each with its ``insert_date``
        (see :func:`~xnat_provider.client.protocol.latest_experiment`)."""
        return self.transport.read(experiments_lookup(project, subject))

    def get_experiment(self, project: str, experiment: str) -> Experiment:
        """An experiment by label or ID within its project, subject label included (a second GET: the object
        document only has the subject's ID); :class:`XnatNotFoundError` if absent."""
        return self.transport.read(experiment_lookup(project, experiment))

    def find_experiment(self, project: str, label: str) -> Experiment | None:
        """As :meth:`get_experiment`, or None when the experiment (or the project) is absent."""
        return self.transport.read(or_none(experiment_lookup(project, label)))

    def experiment_path(self, project: str, experiment: str | Experiment, subject: str | None = None) -> str:
        """The path under which XNAT routes an experiment's scans, assessors and files.

        XNAT has them only under ``/data/experiments/{ID}`` and ``/data/projects/{P}/subjects/{S}/experiments/
        {E}``, never under ``/data/projects/{P}/experiments/{E}``. With ``subject`` given (a label or ID) the long
        form is used as given, with no request; an :class:`Experiment` gives its ID; a label (or ID) within the
        project costs one GET of the experiment to learn its ID. :class:`XnatNotFoundError` if absent.
        """
        return self.transport.read(experiment_path_lookup(project, experiment, subject))

    def object_path(self, project: str, subject: str | None = None, experiment: str | Experiment | None = None,
                    scan: str | None = None, assessor: str | None = None) -> str:
        """An archive object's path (project, subject, experiment, scan or assessor), in a form XNAT routes.

        Labels or IDs as the caller knows them; only a scan or assessor without its subject costs a lookup of
        the experiment's ID (see :meth:`experiment_path`)."""
        if scan is None and assessor is None:
            label = experiment.label if isinstance(experiment, Experiment) else experiment
            return base_path(project, subject, label)
        if experiment is None:
            raise XnatBadInputError("A scan or assessor needs its session (experiment).")
        path = self.experiment_path(project, experiment, subject)
        return f"{path}/scans/{q(scan)}" if scan is not None else f"{path}/assessors/{q(str(assessor))}"

    def list_scans(self, project: str, experiment: str | Experiment) -> list[Scan]:
        """An experiment's scans (``experiment``: a label or ID within ``project``, or an :class:`Experiment`)."""
        return self.transport.read(scans_lookup(project, experiment))

    def scans_at(self, experiment_path: str) -> list[Scan]:
        """The scans of the experiment at ``experiment_path`` (from :meth:`experiment_path`)."""
        return scans_from_rows(self._rows(f"{experiment_path}/scans"))

    def list_resources(self, path: str) -> list[dict[str, str]]:
        """Resources of an archive object path (see :func:`~xnat_provider.client.protocol.base_path`)."""
        return self._rows(f"{path}/resources")

    # ---- creating ----------------------------------------------------------------------------------
    def create_subject(self, project: str, label: str) -> str:
        """Create a subject (or find it); returns its ID."""
        check_label(label, "subject")
        return self.transport.request("PUT", base_path(project, label)).text.strip()

    def create_experiment(self, project: str, subject: str, label: str, xsi_type: str = "xnat:mrSessionData",
                          **attributes: str) -> str:
        """Create an experiment (and its subject if needed) or find it; returns its ID."""
        check_label(subject, "subject")
        check_label(label, "experiment")
        if xsi_type not in SESSION_TYPES:
            raise XnatBadInputError(f"Unsupported session xsiType {xsi_type!r}; expected one of {SESSION_TYPES}")
        params = {"xsiType": xsi_type, **{f"{xsi_type}/{k}": v for k, v in attributes.items()}}
        return self.transport.request("PUT", base_path(project, subject, label), params=params).text.strip()

    # ---- custom fields -----------------------------------------------------------------------------
    def _field_target(self, project: str, subject: str | None, experiment: str | None) -> tuple[str, str]:
        if experiment is not None:
            path = base_path(project, subject, experiment)
            return path, self._item(path)["meta"]["xsi:type"]
        if subject is not None:
            return base_path(project, subject), "xnat:subjectData"
        return base_path(project), "xnat:projectData"

    def get_fields(self, project: str, subject: str | None = None, experiment: str | None = None) -> dict[str, str]:
        return self.transport.read(fields_lookup(project, subject, experiment))

    def set_fields(self, project: str, fields: dict[str, Any], subject: str | None = None,
                   experiment: str | None = None) -> dict[str, str]:
        """Set custom fields, then read them back: XNAT may answer 200 and store nothing on some paths.

        Returns the fields as stored. Names are lower-case, as XNAT keeps them.
        """
        if not fields:
            raise XnatBadInputError("No fields to set.")
        wanted = {}
        for name, value in fields.items():
            if not name or not str(name).replace("_", "").isalnum():
                raise XnatBadInputError(f"Invalid custom field name {name!r}: letters, digits and '_' only.")
            if value is None:
                raise XnatBadInputError(f"Field {name!r} has no value; use delete_fields to remove a field.")
            wanted[str(name).lower()] = str(value)
        path, xsi = self._field_target(project, subject, experiment)
        params = {"xsiType": xsi, **{custom_field_param(xsi, k): v for k, v in wanted.items()}}
        self.transport.request("PUT", path, params=params)
        stored = {k.lower(): v for k, v in fields_from_item(self._item(path)).items()}
        wrong = {k: (v, stored.get(k)) for k, v in wanted.items() if stored.get(k) != v}
        if wrong:
            raise XnatServerError(f"PUT {path}: XNAT answered success but did not store the fields "
                                  f"(wanted, stored): {wrong}", method="PUT", path=path)
        return {k: stored[k] for k in wanted}

    def delete_fields(self, project: str, names: list[str], subject: str | None = None,
                      experiment: str | None = None) -> None:
        path, xsi = self._field_target(project, subject, experiment)
        params: dict[str, str] = {"xsiType": xsi}
        for n in names:
            params[custom_field_param(xsi, n.lower())] = "NULL"
            params[f"{xsi}/fields/field[name={n.lower()}]/name"] = "NULL"
        self.transport.request("PUT", path, params=params)
        left = {k.lower() for k in fields_from_item(self._item(path))} & {n.lower() for n in names}
        if left:
            raise XnatServerError(f"PUT {path}: XNAT answered success but kept the fields {sorted(left)}",
                                  method="PUT", path=path)

    # ---- alias tokens ------------------------------------------------------------------------------
    # XNAT's AliasTokenRestlet refuses, for a login that is not a site administrator's, any operation on another
    # user's account or token (403 "Non-admin users can only request operations on alias tokens for their own
    # account"), before it looks at the operation: so validating someone else's token is a refusal, not an answer.
    def issue_token(self, user: str | None = None) -> AliasToken:
        """A new alias token for the logged-in user, or for ``user`` (site administrators only).

        :raises XnatPermissionError: ``user`` is another user and this login is not a site administrator's.
        """
        path = "/data/services/tokens/issue" + (f"/user/{q(user)}" if user else "")
        try:
            resp = self.transport.request("GET", path, retry=False)
        except XnatPermissionError as exc:
            raise _token_refused(exc, f"{user!r} is another user and this login is not a site administrator's",
                                 f"issue the token with {user!r}'s own login or a site administrator's") from exc
        token = AliasToken.from_json(json_answer(resp.content, "GET", path))
        self.transport.add_secret(token.secret)
        return token

    def validate_token(self, token: AliasToken | str, secret: str | None = None) -> str | None:
        """The user a token stands for, or None when it is invalid (wrong secret) or unknown (never issued,
        invalidated, or expired and swept: XNAT deletes expired tokens hourly and does not check expiry here, so
        a token may still validate for up to an hour after its expiry).

        :raises XnatPermissionError: the token belongs to another user and this login is not a site
            administrator's. XNAT refuses (403) rather than answer, so the token's validity is unknown: this is
            never reported as None. Validate with the token owner's login or a site administrator's.
        """
        alias, secret = (token.alias, token.secret) if isinstance(token, AliasToken) else (token, secret)
        if not secret:
            raise XnatBadInputError("validate_token needs the token's secret.")
        self.transport.add_secret(secret)
        try:
            path = f"/data/services/tokens/validate/{q(alias)}/{q(secret)}"
            data = json_answer(self.transport.request("GET", path).content, "GET", self.transport.redact(path))
        except XnatNotFoundError:
            return None
        except XnatPermissionError as exc:
            raise _token_refused(exc, f"token {alias} belongs to another user and this login is not a site "
                                      "administrator's", "XNAT did not say whether it is valid; validate it with the "
                                      "token owner's login or a site administrator's") from exc
        return data.get("valid") or None

    def invalidate_token(self, token: AliasToken | str) -> None:
        """Invalidate a token (an unknown one is already gone: no error).

        :raises XnatPermissionError: the token belongs to another user and this login is not a site
            administrator's; the token stays valid.
        """
        alias = token.alias if isinstance(token, AliasToken) else token
        try:
            self.transport.request("GET", f"/data/services/tokens/invalidate/{q(alias)}")
        except XnatNotFoundError:
            pass  # already gone: the goal is reached
        except XnatPermissionError as exc:
            raise _token_refused(exc, f"token {alias} belongs to another user and this login is not a site "
                                      "administrator's", "it was not invalidated; invalidate it with the token "
                                      "owner's login or a site administrator's") from exc

    # ---- DICOM -------------------------------------------------------------------------------------
    def dicom_dump(self, project: str, experiment: str, scan: str | None = None,
                   fields: list[str] | None = None) -> list[dict[str, str]]:
        """XNAT's DICOM dump of a session's (or a scan's) first file: rows of tag, vr, value, description."""
        src = f"/archive/projects/{q(project)}/experiments/{q(experiment)}" + (f"/scans/{q(scan)}" if scan else "")
        params: list[tuple[str, str]] = [("src", src), ("format", "json")]
        params += [("field", f) for f in fields or []]
        resp = self.transport.request("GET", "/data/services/dicomdump", params=params)
        return result_rows(resp.content, "GET", "/data/services/dicomdump")


def _token_refused(exc: XnatPermissionError, what: str, remedy: str) -> XnatPermissionError:
    """XNAT's 403 on an alias-token operation, told with what it means and what to do when it is the refusal of
    another user's account or token (AliasTokenRestlet l.95-97, or its case-sensitive twin in ``represent``)."""
    said = (exc.xnat_message or "").lower()
    others = "for their own account" in said or "for other users" in said
    return XnatPermissionError(f"{exc} ({what}: {remedy})" if others else str(exc), method=exc.method,
                               path=exc.path, status=exc.status, xnat_message=exc.xnat_message)
