"""S3 XML: rendering response documents from plain Python values, and safe parsing of request bodies."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as safe_et
from defusedxml import DefusedXmlException

from gateway.errors import S3Error

S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

MAX_DELETE_KEYS = 1000  # S3's limit on keys per DeleteObjects request
MAX_PARTS = 10000  # S3's limit on parts per multipart upload
MAX_XML_BODY = 2 * 1024 * 1024  # no valid request document comes near this; a bigger one is refused

# A value inside a document:
#   str/int/float/Decimal-like -> text; bool -> "true"/"false"; datetime -> S3's ISO 8601 with ms;
#   None -> the element is left out;
#   Mapping -> child elements, in order;
#   list of (name, value) pairs -> child elements, in order, names may repeat (e.g. Version/DeleteMarker);
#   any other list under a name -> that element repeated once per item (e.g. "Contents": [...]).
XmlValue = str | int | float | bool | datetime | None | Mapping[str, "XmlValue"] | Sequence["XmlValue"]
XmlContent = Mapping[str, XmlValue] | Sequence[tuple[str, XmlValue]]

# Characters XML 1.0 cannot carry literally; object keys may contain them, so they become
# character references instead of making the whole document unparseable.
_NEEDS_REF = re.compile("[\x00-\x08\x0b\x0c\x0d\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}
_SPECIAL = re.compile('[&<>"]')
_ANY = re.compile(f"{_SPECIAL.pattern}|{_NEEDS_REF.pattern}")
"""Either kind: most text (keys, ETags, names) has neither, and is left as it is after one scan."""


def escape(text: str) -> str:
    """Escape text for an XML element body (markup characters, and control characters as references)."""
    if _ANY.search(text) is None:
        return text
    text = _SPECIAL.sub(lambda m: _ESCAPES[m.group()], text)
    return _NEEDS_REF.sub(lambda m: f"&#x{ord(m.group()):x};", text)


def format_timestamp(t: datetime) -> str:
    """S3's timestamp format in XML: 2009-10-12T17:50:30.000Z, always UTC."""
    if t.tzinfo is not None:
        t = t.astimezone(UTC)
    return (f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}."
            f"{t.microsecond // 1000:03d}Z")


def _is_pairs(value: object) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in value)
    )


def _text(value: str | float | bool | datetime) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_timestamp(value)
    return escape(str(value))


def _emit(out: list[str], name: str, value: XmlValue) -> None:
    if value is None:
        return
    if type(value) is str:  # most values (a listing page has thousands): skip the container checks
        out.append(f"<{name}>{escape(value)}</{name}>")
    elif type(value) is dict or isinstance(value, Mapping):
        out.append(f"<{name}>")
        for child, child_value in value.items():
            _emit(out, child, child_value)
        out.append(f"</{name}>")
    elif _is_pairs(value):
        out.append(f"<{name}>")
        for child, child_value in value:  # type: ignore[union-attr, misc]
            _emit(out, child, child_value)
        out.append(f"</{name}>")
    elif isinstance(value, (list, tuple)):
        for item in value:
            _emit(out, name, item)
    else:
        out.append(f"<{name}>{_text(value)}</{name}>")


def render(root_name: str, content: XmlContent, xmlns: bool = True) -> bytes:
    """Render an S3 response document: <?xml?> declaration, root element (with S3's namespace), content."""
    out: list[str] = [f'<{root_name} xmlns="{S3_XMLNS}">' if xmlns else f"<{root_name}>"]
    items = content.items() if isinstance(content, Mapping) else content
    for name, value in items:
        _emit(out, name, value)
    out.append(f"</{root_name}>")
    # Plain utf-8 cannot fail: escape() turned lone surrogates into character references.
    return XML_DECLARATION + "".join(out).encode("utf-8")


# ---------------------------------------------------------------- parsing


@dataclass
class CompletedPart:
    """One <Part> of a CompleteMultipartUpload request."""

    part_number: int
    etag: str  # as sent by the client, quotes stripped
    checksums: dict[str, str] = field(default_factory=dict)  # e.g. {"crc32": "base64..."}


@dataclass
class ObjectToDelete:
    """One <Object> of a DeleteObjects request."""

    key: str
    version_id: str | None = None


@dataclass
class DeleteRequest:
    """A DeleteObjects request body."""

    objects: list[ObjectToDelete]
    quiet: bool = False


@dataclass
class VersioningConfiguration:
    """A PutBucketVersioning request body."""

    status: str | None  # "Enabled", "Suspended" or None when the element is absent
    mfa_delete: str | None = None


def _local(tag: str) -> str:
    # Clients send documents with and without S3's namespace; only local names matter.
    return tag.rsplit("}", 1)[-1]


def parse_xml(body: bytes, root_name: str) -> Element:
    """Parse a request document, refusing DTDs, entities and external references, and check its root name."""
    if len(body) > MAX_XML_BODY:
        raise S3Error("MalformedXML", "The XML you provided was too large.")
    try:
        root = safe_et.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (DefusedXmlException, SyntaxError, ValueError):
        # ParseError is a SyntaxError; DefusedXmlException covers DTDs, entity tricks, external refs.
        raise S3Error("MalformedXML") from None
    if _local(root.tag) != root_name:
        raise S3Error("MalformedXML")
    return root


def _children(elem: Element, name: str) -> list[Element]:
    return [c for c in elem if _local(c.tag) == name]


def _child_text(elem: Element, name: str) -> str | None:
    found = _children(elem, name)
    if len(found) > 1:
        raise S3Error("MalformedXML")
    return (found[0].text or "") if found else None


def parse_complete_multipart_upload(body: bytes) -> list[CompletedPart]:
    """Parse CompleteMultipartUpload: parts in strictly ascending order, 1..10000 of them."""
    root = parse_xml(body, "CompleteMultipartUpload")
    elems = _children(root, "Part")
    if not elems or len(elems) > MAX_PARTS:
        raise S3Error("MalformedXML")
    parts: list[CompletedPart] = []
    for elem in elems:
        number_text, etag = _child_text(elem, "PartNumber"), _child_text(elem, "ETag")
        if number_text is None or etag is None:
            raise S3Error("MalformedXML")
        try:
            number = int(number_text.strip())
        except ValueError:
            raise S3Error("MalformedXML") from None
        if not 1 <= number <= MAX_PARTS:
            raise S3Error(
                "InvalidArgument",
                "Part number must be an integer between 1 and 10000, inclusive",
                extra={"ArgumentName": "partNumber", "ArgumentValue": number_text},
            )
        if parts and number <= parts[-1].part_number:
            raise S3Error("InvalidPartOrder")
        checksums = {
            _local(c.tag)[len("Checksum"):].lower(): (c.text or "").strip()
            for c in elem
            if _local(c.tag).startswith("Checksum") and _local(c.tag) != "ChecksumType"
        }
        parts.append(CompletedPart(number, etag.strip().strip('"'), checksums))
    return parts


def parse_delete(body: bytes) -> DeleteRequest:
    """Parse a DeleteObjects body: 1..1000 objects, optional <Quiet>."""
    root = parse_xml(body, "Delete")
    elems = _children(root, "Object")
    if not elems or len(elems) > MAX_DELETE_KEYS:
        raise S3Error("MalformedXML")
    objects: list[ObjectToDelete] = []
    for elem in elems:
        key = _child_text(elem, "Key")
        if key is None:
            raise S3Error("MalformedXML")
        version = _child_text(elem, "VersionId")
        objects.append(ObjectToDelete(key, version if version else None))
    quiet_text = _child_text(root, "Quiet")
    quiet = (quiet_text or "").strip().lower()
    if quiet not in ("", "true", "false"):
        raise S3Error("MalformedXML")
    return DeleteRequest(objects, quiet == "true")


def parse_create_bucket(body: bytes) -> str | None:
    """Parse an optional CreateBucketConfiguration body; return its LocationConstraint (None if absent)."""
    if not body.strip():
        return None
    root = parse_xml(body, "CreateBucketConfiguration")
    location = _child_text(root, "LocationConstraint")
    return location.strip() if location is not None and location.strip() else None


def parse_versioning_configuration(body: bytes) -> VersioningConfiguration:
    """Parse a PutBucketVersioning body; Status must be Enabled or Suspended when given."""
    root = parse_xml(body, "VersioningConfiguration")
    status = _child_text(root, "Status")
    mfa = _child_text(root, "MfaDelete")
    if status is not None and status.strip() not in ("Enabled", "Suspended"):
        raise S3Error("MalformedXML")
    if mfa is not None and mfa.strip() not in ("Enabled", "Disabled"):
        raise S3Error("MalformedXML")
    return VersioningConfiguration(status.strip() if status else None, mfa.strip() if mfa else None)


@dataclass
class Grant:
    """One <Grant> of a PutBucketAcl/PutObjectAcl AccessControlPolicy body."""

    grantee: str  # the grantee's ID, group URI or e-mail address
    permission: str


def parse_access_control_policy(body: bytes) -> list[Grant]:
    """The grants of an AccessControlPolicy document."""
    root = parse_xml(body, "AccessControlPolicy")
    lists = _children(root, "AccessControlList")
    if len(lists) > 1:
        raise S3Error("MalformedXML")
    grants = []
    for elem in _children(lists[0], "Grant") if lists else []:
        grantees = _children(elem, "Grantee")
        permission = _child_text(elem, "Permission")
        if len(grantees) != 1 or permission is None:
            raise S3Error("MalformedXML")
        who = next((t for t in (_child_text(grantees[0], n) for n in ("ID", "URI", "EmailAddress")) if t), "")
        grants.append(Grant(who.strip(), permission.strip()))
    return grants
