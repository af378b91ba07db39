"""Returned messages (a bounce webhook's `mime`): bounce or automatic reply, from real MIME messages."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fixtures_copernica import dsn, out_of_office, read_receipt, reply, report
from workers.events import mime
from workers.events.mime import AUTORESPONDED, BOUNCED, classify


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(out_of_office(), id="out-of-office"),
        pytest.param(reply("Vacation", "Away", x_autoreply="yes"), id="x-autoreply"),
        pytest.param(reply("Vacation", "Away", x_autorespond="Vacation"), id="x-autorespond"),
        pytest.param(reply("Away", "Away", precedence="auto_reply"), id="precedence-auto-reply"),
        pytest.param(reply("Away", "Away", auto_submitted="auto-generated"), id="auto-generated"),
        pytest.param(
            reply("Away", "Away", auto_submitted='auto-replied; owner-email="a@example.com"'),
            id="auto-submitted-with-parameters",
        ),
        pytest.param(read_receipt(), id="read-receipt"),
        pytest.param(
            report("feedback-report", [{"Feedback-Type": "abuse"}], part_type="message/feedback-report"),
            id="other-report",
        ),
    ],
)
def test_automatic_messages_are_autoresponded(message: str) -> None:
    assert classify(message) == (AUTORESPONDED, None)


def test_a_delivery_status_report_is_a_bounce_even_marked_auto_replied() -> None:
    assert classify(dsn("5.1.1", auto_submitted="auto-replied")) == (BOUNCED, "5.1.1")
    assert classify(dsn("4.2.2", x_autoreply="yes", precedence="auto_reply")) == (BOUNCED, "4.2.2")


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(reply("Re: Weekly news", "Please take me off the list."), id="human-reply"),
        pytest.param(reply("Re: Weekly news", "Thanks", auto_submitted="no"), id="auto-submitted-no"),
        pytest.param(reply("Re", "x", precedence="bulk"), id="precedence-bulk"),
        pytest.param("From: MAILER-DAEMON\r\nSubject: failure\r\n\r\nUser unknown", id="plain-bounce"),
        pytest.param("", id="empty"),
        pytest.param(None, id="none"),
        pytest.param(["a"], id="not-text"),
    ],
)
def test_anything_else_stays_a_bounce(message: object) -> None:
    assert classify(message) == (BOUNCED, None)


def test_the_status_is_read_from_the_status_part_only() -> None:
    """A Status-like line in the human part or in the returned message is not the report's."""
    message = dsn("5.7.1").replace("This is an automatically generated report.", "Status: 4.4.4")
    assert classify(message) == (BOUNCED, "5.7.1")
    no_status = report(
        "delivery-status",
        [{"Reporting-MTA": "dns; mx"}, {"Action": "failed", "Status": "bad"}],
        part_type="message/delivery-status",
    )
    assert classify(no_status) == (BOUNCED, None)


def test_crlf_and_header_case_as_mail_servers_write_them() -> None:
    wire = dsn("5.1.1").replace("\n", "\r\n")
    wire = wire.replace("Content-Type: multipart/report", "CONTENT-TYPE: Multipart/Report")
    assert classify(wire) == (BOUNCED, "5.1.1")
    crlf = EmailMessage(policy=policy.SMTP)
    crlf["From"], crlf["Subject"], crlf["AUTO-SUBMITTED"] = "a@example.com", "Away", "Auto-Replied"
    crlf.set_content("away")
    assert classify(crlf.as_string()) == (AUTORESPONDED, None)


def test_only_reports_have_their_body_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap: headers decide, the body parser runs for a multipart/report only."""
    calls: list[int] = []
    real = mime.Parser.parsestr

    def counting(self: mime.Parser, text: str, headersonly: bool = False) -> object:
        if not headersonly:  # HeaderParser is a Parser reading headers only
            calls.append(len(text))
        return real(self, text, headersonly)

    monkeypatch.setattr(mime.Parser, "parsestr", counting)
    big = reply("Away", "x" * 2_000_000, auto_submitted="auto-replied")
    assert classify(big) == (AUTORESPONDED, None)
    assert classify(reply("Re", "y" * 2_000_000)) == (BOUNCED, None)
    assert calls == []
    assert classify(dsn()) == (BOUNCED, "5.1.1")
    assert len(calls) == 1 and calls[0] <= mime.BODY_MAX


def test_a_cut_or_broken_message_never_raises() -> None:
    whole = dsn("5.1.1")
    for end in range(0, len(whole), 97):
        assert classify(whole[:end])[0] == BOUNCED
    assert classify('Content-Type: multipart/report; report-type=delivery-status; boundary="\r\n\r\n--')[0] == BOUNCED
    assert classify("Content-Type: multipart/report; report-type*=utf-8''delivery%2Dstatus\n\n")[1] is None
    assert classify("\x00\udcff Auto-Submitted: \x00\n\n") == (BOUNCED, None)


@given(
    st.text(max_size=400),
    st.sampled_from(
        [
            "",
            "Auto-Submitted: auto-replied\n",
            "Content-Type: multipart/report; report-type=delivery-status; boundary=b\n",
        ]
    ),
)
def test_arbitrary_text_never_raises(body: str, head: str) -> None:
    kind, status = classify(head + body)
    assert kind in (BOUNCED, AUTORESPONDED)
    assert status is None or status[0] in "245"
