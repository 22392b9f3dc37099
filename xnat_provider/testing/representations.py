"""How XNAT writes what it returns: result-set tables, object documents (JSON and XML), URI lists.

Every table value is a string, as XNAT's ``XFTTable`` writes them; that is what clients written against a
real XNAT expect, so the emulator never emits a JSON number or null.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Sequence
from typing import Any

from lxml import etree

from .http import Response, XnatHttpError

NS = {
    "xnat": "http://nrg.wustl.edu/xnat",
    "xdat": "http://nrg.wustl.edu/security",
    "cat": "http://nrg.wustl.edu/catalog",
    "prov": "http://www.nbirn.net/prov",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def table(
    req_format: str,
    columns: Sequence[str],
    rows: Sequence[dict[str, Any]],
    *,
    title: str | None = None,
    total: bool = True,
    column_meta: bool = False,
) -> Response:
    """Render a listing in the requested format (json, csv, xml or html)."""
    rows = [{c: cell(r.get(c)) for c in columns} for r in rows]
    fmt = req_format.lower()
    if fmt == "json":
        rs: dict[str, Any] = {}
        if column_meta:
            rs["Columns"] = [{"key": c, "element_name": "", "xPATH": "", "type": "string"} for c in columns]
        rs["Result"] = rows
        if title:
            rs["title"] = title
        if total:
            rs["totalRecords"] = str(len(rows))
        return Response(body=json.dumps({"ResultSet": rs}).encode(), content_type="application/json")
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([r[c] for c in columns])
        return Response(body=buf.getvalue().encode(), content_type="text/csv")
    if fmt == "xml":
        root = etree.Element("ResultSet", nsmap={None: "http://nrg.wustl.edu/xe"}, totalRecords=str(len(rows)))
        results = etree.SubElement(root, "results")
        cols = etree.SubElement(results, "columns")
        for c in columns:
            etree.SubElement(cols, "column").text = c
        rws = etree.SubElement(results, "rows")
        for r in rows:
            row = etree.SubElement(rws, "row")
            for c in columns:
                etree.SubElement(row, "cell").text = r[c]
        return Response(body=xml_bytes(root), content_type="text/xml")
    if fmt == "html":
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(r[c])}</td>" for c in columns) + "</tr>" for r in rows
        )
        page = f"<html><body><table><tr>{head}</tr>{body}</table></body></html>"
        return Response(body=page.encode(), content_type="text/html")
    raise XnatHttpError(406, f"Unsupported format: {req_format}")


def item(xsi_type: str, data_fields: dict[str, Any], children: list[dict[str, Any]] | None = None) -> dict:
    """One node of XNAT's object JSON (``ItemJSONBuilder``)."""
    return {
        "meta": {"isHistory": False, "xsi:type": xsi_type, "create_event_id": 1},
        "data_fields": {k: cell(v) for k, v in data_fields.items() if v not in (None, "")},
        "children": children or [],
    }


def items_response(nodes: list[dict]) -> Response:
    return Response(body=json.dumps({"items": nodes}).encode(), content_type="application/json")


def child(field_path: str, nodes: list[dict]) -> dict:
    return {"field": field_path, "items": nodes}


XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def xml_bytes(root: etree._Element) -> bytes:
    """XML with XNAT's exact declaration (xnatpy recognises catalogs by this prefix)."""
    return XML_DECLARATION + etree.tostring(root, encoding="UTF-8", pretty_print=True)


def xml_response(root: etree._Element) -> Response:
    return Response(body=xml_bytes(root), content_type="text/xml")


def xml_element(tag: str, attrib: dict[str, Any] | None = None, root: bool = False) -> etree._Element:
    prefix, name = tag.split(":", 1)
    attrs = {k: cell(v) for k, v in (attrib or {}).items() if v not in (None, "")}
    if root:
        return etree.Element(etree.QName(NS[prefix], name), attrs, nsmap=NS)
    return etree.Element(etree.QName(NS[prefix], name), attrs)


def sub(parent: etree._Element, tag: str, text: Any = None, attrib: dict[str, Any] | None = None) -> etree._Element:
    prefix, name = tag.split(":", 1)
    el = etree.SubElement(parent, etree.QName(NS[prefix], name), {k: cell(v) for k, v in (attrib or {}).items()})
    if text not in (None, ""):
        el.text = cell(text)
    return el


def uri_list(uris: Sequence[str], req_format: str | None = None) -> Response:
    """The import and archive services' ``text/uri-list`` answer: one CRLF-terminated line per URI."""
    if req_format == "txt" and len(uris) == 1:
        return Response(body=uris[0].encode(), content_type="text/plain")
    if req_format == "html":
        links = "".join(f'<a href="{html.escape(u)}">{html.escape(u)}</a><br>' for u in uris)
        return Response(body=f"<html><body>{links}</body></html>".encode(), content_type="text/html")
    return Response(body="".join(u + "\r\n" for u in uris).encode(), content_type="text/uri-list")
