"""A real SMTP server for the notification tests (aiosmtpd): every message it
accepts is printed on stdout as one JSON line, raw and as its decoded MIME parts
(so tests read an attachment as a mail client would, whatever its transfer
encoding); it stops when stdin closes.

Usage: python3 smtp_sink.py  ->  prints "ready PORT", then one line per email.
"""
import email
import email.policy
import json
import socket
import sys

from aiosmtpd.controller import Controller


class Sink:
    async def handle_DATA(self, server, session, envelope):
        print(json.dumps({
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
            "parts": parts(envelope.content),
        }), flush=True)
        return "250 OK"


def parts(raw):
    """Each leaf part: its type, its filename if any, and its decoded text."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    return [
        {
            "content_type": part.get_content_type(),
            "method": part.get_param("method"),
            "filename": part.get_filename(),
            "text": part.get_content() if part.get_content_maintype() == "text" else None,
        }
        for part in message.walk()
        if not part.is_multipart()
    ]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    port = free_port()
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    print(f"ready {port}", flush=True)
    sys.stdin.read()
    controller.stop()


if __name__ == "__main__":
    main()
