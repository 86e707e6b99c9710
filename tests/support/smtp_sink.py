"""A real SMTP server for the notification tests (aiosmtpd): every message it
accepts is printed on stdout as one JSON line, raw and as its decoded MIME parts
(so tests read an attachment as a mail client would, whatever its transfer
encoding); it stops when stdin closes.

Usage: python3 smtp_sink.py  ->  prints "ready PORT", then one line per email,
and "synced" for each line written to its stdin (after the emails before it).
"""
import asyncio
import email
import email.policy
import json
import sys

from aiosmtpd.smtp import SMTP


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


async def main():
    # Port 0: the kernel picks a free port as the socket binds, so no other
    # process can take it between choosing and binding.
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Sink()), host="127.0.0.1", port=0)
    port = server.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)
    # Each line on stdin is answered "synced", after the lines of every email
    # accepted before it; the server stops when stdin closes.
    while await loop.run_in_executor(None, sys.stdin.readline):
        print("synced", flush=True)
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
