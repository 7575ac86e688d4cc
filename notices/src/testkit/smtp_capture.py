"""A loopback SMTP server for the notices tests.

Started by `testkit::smtp::SmtpCapture`. It binds 127.0.0.1 on a free port,
prints `PORT <n>` on stdout, then one JSON line per accepted message. It can
offer STARTTLS or implicit TLS, require a login, and refuse recipients whose
local part is `nobody` with a permanent 550, so the tests can check how the
client classifies failures.
"""

import argparse
import asyncio
import email
import email.policy
import json
import logging
import socket
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class CaptureHandler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.split("@", 1)[0] == "nobody":
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        login = getattr(session.auth_data, "login", None)
        # Parse with Python's own email package, so the test checks the
        # message as a mail client would read it, not as we wrote it.
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        parts = [
            # SMTP carries CRLF line ends; hand the test plain newlines.
            {"type": part.get_content_type(), "text": part.get_content().replace("\r\n", "\n")}
            for part in message.walk()
            if not part.is_multipart()
        ]
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "headers": {name.lower(): str(value) for name, value in message.items()},
            "content_type": message.get_content_type(),
            "parts": parts,
            "login": login.decode() if login else None,
            "tls": session.ssl is not None
            or server.transport.get_extra_info("sslcontext") is not None,
        }
        print(json.dumps(record), flush=True)
        return "250 2.0.0 accepted"


def make_authenticator(user, password):
    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    return authenticate


async def serve(args):
    tls_context = None
    if args.cert:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(args.cert, args.key)
    authenticator = make_authenticator(args.user, args.password) if args.user else None
    loop = asyncio.get_running_loop()

    def protocol():
        return SMTP(
            CaptureHandler(),
            hostname="capture.test",
            tls_context=tls_context if args.mode == "starttls" else None,
            require_starttls=args.mode == "starttls",
            authenticator=authenticator,
            auth_required=authenticator is not None,
            auth_require_tls=False,
            loop=loop,
        )

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = await loop.create_server(
        protocol, sock=sock, ssl=tls_context if args.mode == "tls" else None
    )
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    # Exit when the test closes our stdin (or dies), so no server outlives it.
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


def main():
    # aiosmtpd warns that AUTH without TLS is unsafe; the plain mode does it on
    # purpose, over loopback, and the warning would only clutter test output.
    warnings.simplefilter("ignore")
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["plain", "starttls", "tls"], default="plain")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--user")
    parser.add_argument("--password")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
