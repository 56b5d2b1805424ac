"""XML parsing that never resolves entities.

VOC annotations are plain XML with no DTD. A document that declares a DOCTYPE or
an ENTITY is refused outright, which rules out external-entity (XXE) reads and
entity-expansion bombs. The check runs on expat's own events, so it also holds
for UTF-16 or otherwise re-encoded documents that a byte search would miss.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.parsers import expat

from ..structures.errors import DataError


class UnsafeXMLError(DataError):
    """The document declares a DOCTYPE or entities, which annotation files never need."""


def _refuse(kind):
    def handler(*_args):
        raise UnsafeXMLError(f"{kind} declarations are not allowed")
    return handler


def parse_xml(data: bytes, source: str) -> ET.Element:
    """Parse ``data`` (the bytes of ``source``) into an Element; errors are DataErrors naming ``source``."""
    guard = expat.ParserCreate()
    guard.StartDoctypeDeclHandler = _refuse("DOCTYPE")
    guard.EntityDeclHandler = _refuse("ENTITY")
    guard.UnparsedEntityDeclHandler = _refuse("ENTITY")
    guard.ExternalEntityRefHandler = _refuse("external entity")
    try:
        guard.Parse(data, True)
    except UnsafeXMLError as exc:
        raise UnsafeXMLError(f"{source}: refused: {exc} (annotation XML must not use DTDs or entities)") from None
    # ValueError: a multi-byte encoding expat cannot use; LookupError: an encoding Python does not know
    except (expat.ExpatError, ValueError, LookupError) as exc:
        raise DataError(f"{source}: malformed XML: {exc}") from None
    # The guard saw the whole document and it has no DTD, so no entity can be expanded here.
    try:
        return ET.fromstring(data)
    except (ET.ParseError, ValueError, LookupError) as exc:
        raise DataError(f"{source}: malformed XML: {exc}") from None
