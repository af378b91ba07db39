"""What a returned message is: a bounce, or an automatic reply (out of office, vacation, read receipt).

Copernica's `bounce` webhook fires for every mail that comes back to the envelope address and
carries the whole message in `mime`. `classify` reads it with the stdlib `email` package:
headers first (most messages are decided there, without parsing a body), the body only for a
`multipart/report`, and then at most its first `BODY_MAX` characters. It never raises: a
message it cannot read is a bounce, as the webhook says.
"""

from __future__ import annotations

import logging
import re
from email.message import Message
from email.parser import HeaderParser, Parser
from email.utils import collapse_rfc2231_value
from typing import Any

log = logging.getLogger("workers.events.mime")

BOUNCED = "bounced"
AUTORESPONDED = "autoresponded"

HEAD_MAX = 64 * 1024  # the header block read; a longer one is cut here
BODY_MAX = 256 * 1024  # where a report's status part is looked for (it comes before the returned message)
_STATUS_SPAN = 8 * 1024  # parsed past the start of the status part: its fields, not the returned message
_END_OF_HEAD = re.compile(r"\r?\n\r?\n")
_STATUS_PART = re.compile("message/delivery-status", re.IGNORECASE)
_STATUS = re.compile(r"\s*([245]\.\d{1,3}\.\d{1,3})(?!\d)")
# Without one of these in the header block a message is neither a report nor automatic.
_MARKER = re.compile("auto-submitted|x-autoreply|x-autorespond|precedence|multipart/report", re.IGNORECASE)
_FALSE = frozenset({"", "no", "false", "0"})


def classify(mime: Any) -> tuple[str, str | None]:
    """(`bounced` or `autoresponded`, the DSN's enhanced status code or None) for a bounce
    webhook's `mime`.

    A delivery-status report (`multipart/report; report-type=delivery-status`) is a bounce
    whatever else its headers say (mail servers mark their bounces `Auto-Submitted` too); its
    `Status:` gives the code. Any other automatic message is `autoresponded`: `Auto-Submitted`
    other than `no`, `X-Autoreply`, `X-Autorespond`, `Precedence: auto_reply`, or any other
    `multipart/report` (a read receipt). Anything else, no message included, is a bounce.
    """
    if isinstance(mime, bytes | bytearray):
        mime = bytes(mime).decode("utf-8", "replace")
    if not isinstance(mime, str) or not mime:
        return BOUNCED, None
    try:
        return _classify(mime)
    except Exception:  # the email package is lenient, but a returned message is anyone's text
        log.debug("unreadable returned message: taken as a bounce", exc_info=True)
        return BOUNCED, None


def _classify(mime: str) -> tuple[str, str | None]:
    end = _END_OF_HEAD.search(mime, 0, HEAD_MAX)
    head = mime[: end.start() if end is not None else HEAD_MAX]
    if _MARKER.search(head) is None:
        return BOUNCED, None
    headers = HeaderParser().parsestr(head)
    if headers.get_content_type() == "multipart/report":
        if _param(headers, "report-type") == "delivery-status":
            return BOUNCED, _dsn_status(mime)
        return AUTORESPONDED, None  # a read receipt (disposition-notification) or another report
    if _value(headers, "auto-submitted").split(";", 1)[0].strip() not in _FALSE:
        return AUTORESPONDED, None
    if any(name in headers and _value(headers, name) not in _FALSE for name in ("x-autoreply", "x-autorespond")):
        return AUTORESPONDED, None
    if _value(headers, "precedence") == "auto_reply":
        return AUTORESPONDED, None
    return BOUNCED, None


def _value(headers: Message, name: str) -> str:
    """A header's value, trimmed and lower-cased; '' when absent."""
    value = headers.get(name)
    return str(value).strip().lower() if value is not None else ""


def _param(headers: Message, name: str) -> str:
    value = headers.get_param(name)
    return str(collapse_rfc2231_value(value)).strip().lower() if value is not None else ""


def _dsn_status(mime: str) -> str | None:
    """The first `Status:` (RFC 3464 per-recipient field) in the report's
    message/delivery-status part, when it is an enhanced status code. Only the text up to a
    little past that part's header is parsed: the returned message after it can be large."""
    window = mime[:BODY_MAX]
    at = window.find("message/delivery-status")
    if at < 0:
        found = _STATUS_PART.search(window)  # the rare sender that writes it in capitals
        if found is None:
            return None
        at = found.start()
    message = Parser().parsestr(window[: at + _STATUS_SPAN])
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        for block in blocks if isinstance(blocks, list) else ():
            if not isinstance(block, Message):
                continue
            match = _STATUS.match(str(block.get("status", "")))
            if match is not None:
                return match[1]
    return None
