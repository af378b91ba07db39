"""A tiny authoritative DNS server for the tests: TXT records over UDP on 127.0.0.1, in a thread.

Records can be changed while it runs (key rotation) and every query is counted, so a test can
assert that a cached key costs no lookup. Long TXT values are split into 255-byte strings the
way real zones publish DKIM keys, so the client must join them.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from types import TracebackType

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.TXT import TXT


def split_txt(value: str | bytes, size: int = 255) -> list[bytes]:
    raw = value.encode() if isinstance(value, str) else value
    return [raw[i : i + size] for i in range(0, len(raw), size)] or [b""]


class DnsServer:
    """`records[name] = [txt value, ...]`; `queries[name]` counts the questions asked."""

    def __init__(self) -> None:
        self.records: dict[str, list[str | bytes]] = {}
        self.queries: Counter[str] = Counter()
        self.silent = False  # True: drop every query (a resolver that does not answer)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._sock.getsockname()
        return f"{host}:{port}"

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            try:
                reply = self._answer(dns.message.from_wire(data))
            except Exception:  # a test server ignores what it cannot read
                continue
            if reply is not None:
                self._sock.sendto(reply, peer)

    def _answer(self, query: dns.message.Message) -> bytes | None:
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        self.queries[name] += 1
        if self.silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        values = self.records.get(name)
        if values is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT:
            rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, dns.rdatatype.TXT)
            for value in values:
                rrset.add(TXT(dns.rdataclass.IN, dns.rdatatype.TXT, split_txt(value)), ttl=60)
            response.answer.append(rrset)
        return response.to_wire(max_size=65535)
