"""rill-testkit's SASL gate: a SASL (optionally SASL_SSL) listener in front of a plaintext broker.

Run by rill_testkit::sasl; not a tool of its own. The SCRAM server side is the `scramp` package
(an implementation independent of every Kafka client); PLAIN and the unsecured OAUTHBEARER
tokens are checked here. The gate behaves as a Kafka broker's SASL listener does:

- before authentication it relays ApiVersions, answers SaslHandshake (v1 only) and
  SaslAuthenticate itself, and closes the connection on anything else;
- once authenticated it relays every request to the broker and every answer back, in order;
- with --session-lifetime-ms it tells clients the session lifetime (SaslAuthenticate v1+,
  KIP-368), closes a connection whose session has ended when a request other than
  SaslHandshake arrives, and accepts a re-authentication as the same user only;
- an OAUTHBEARER token is refused as Kafka does (RFC 7628): a JSON error report first,
  then SASL_AUTHENTICATION_FAILED once the client acknowledges it with %x01.

Events go to stdout, one per line, `event key=value ...` (never a password or a token):
`listening port=P`, `authenticated conn=N mechanism=M user=U reauth=0|1 lifetime_ms=L`,
`refused conn=N mechanism=M reason=R`, `expired conn=N`, `closed conn=N`.
"""
import argparse
import asyncio
import base64
import itertools
import json
import signal
import ssl
import struct
import sys
import time

from scramp import ScramException, ScramMechanism

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
ILLEGAL_SASL_STATE, UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 34, 33, 58
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
MAX_FRAME = 64 * 1024 * 1024


def event(name, **fields):
    parts = [name] + [f"{k}={str(v).replace(' ', '_')}" for k, v in fields.items()]
    print(" ".join(parts), flush=True)


class Reader:
    """Big-endian Kafka primitives over one frame."""

    def __init__(self, data, at=0):
        self.data, self.at = data, at

    def take(self, fmt):
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def uvarint(self):
        value = shift = 0
        while True:
            byte = self.data[self.at]
            self.at += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        value = bytes(self.data[self.at:self.at + n]).decode()
        self.at += n
        return value

    def bytes_(self, compact):
        n = self.uvarint() - 1 if compact else self.take(">i")
        if n < 0:
            return b""
        value = bytes(self.data[self.at:self.at + n])
        self.at += n
        return value

    def skip_tagged(self):
        for _ in range(self.uvarint()):
            self.uvarint()
            self.at += self.uvarint()


def uvarint(value):
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def frame(correlation_id, body, flexible_header=False):
    header = struct.pack(">i", correlation_id) + (b"\x00" if flexible_header else b"")
    return struct.pack(">i", len(header) + len(body)) + header + body


def handshake_answer(correlation_id, error, mechanisms):
    body = struct.pack(">hi", error, len(mechanisms))
    for name in mechanisms:
        body += struct.pack(">h", len(name)) + name.encode()
    return frame(correlation_id, body)


def authenticate_answer(correlation_id, version, error, message, auth_bytes, lifetime_ms):
    message_bytes = None if message is None else message.encode()
    if version >= 2:
        body = struct.pack(">h", error)
        body += uvarint(0) if message_bytes is None else uvarint(len(message_bytes) + 1) + message_bytes
        body += uvarint(len(auth_bytes) + 1) + auth_bytes + struct.pack(">q", lifetime_ms) + b"\x00"
        return frame(correlation_id, body, flexible_header=True)
    body = struct.pack(">h", error)
    body += struct.pack(">h", -1) if message_bytes is None else struct.pack(">h", len(message_bytes)) + message_bytes
    body += struct.pack(">i", len(auth_bytes)) + auth_bytes
    if version >= 1:
        body += struct.pack(">q", lifetime_ms)
    return frame(correlation_id, body)


async def read_frame(stream):
    (size,) = struct.unpack(">i", await stream.readexactly(4))
    if not 0 < size <= MAX_FRAME:
        raise ConnectionError(f"frame size {size}")
    return await stream.readexactly(size)


class Refused(Exception):
    """Authentication failed; the message goes to the client."""


class Client:
    """One client connection and its SASL state."""

    ids = itertools.count(1)

    def __init__(self, gate, reader, writer):
        self.gate, self.reader, self.writer = gate, reader, writer
        self.conn = next(Client.ids)
        self.mechanism = None  # chosen by the last SaslHandshake
        self.pending = None  # an exchange in progress: a scramp server, or "oauth-refused"
        self.user = None  # authenticated principal
        self.session_end = None  # monotonic time, or None before authentication
        self.reauthenticating = False
        self.scram_user = None  # the user a SCRAM exchange in progress names
        self.answers = asyncio.Queue()  # in request order: bytes, b"" for "from the broker", None to stop

    async def serve(self):
        host, port = self.gate.broker
        up_reader, self.up_writer = await asyncio.open_connection(host, port)
        relay = asyncio.ensure_future(self.write_answers(up_reader))
        try:
            while True:
                request = await read_frame(self.reader)
                if not await self.handle(request):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, OSError, struct.error):
            pass
        finally:
            self.answers.put_nowait(None)
            await asyncio.gather(relay, return_exceptions=True)
            for stream in (self.writer, self.up_writer):
                try:
                    stream.close()
                except Exception:
                    pass
            event("closed", conn=self.conn)

    async def handle(self, request):
        """Handles one request; False closes the connection."""
        header = Reader(request)
        api, version, correlation_id = header.take(">h"), header.take(">h"), header.take(">i")
        header.string()  # client id
        if api == SASL_AUTHENTICATE and version >= 2:
            header.skip_tagged()
        if api == SASL_HANDSHAKE:
            self.answers.put_nowait(self.handshake(correlation_id, version, header))
            return True
        if api == SASL_AUTHENTICATE:
            answer, keep = self.authenticate(correlation_id, version, header)
            self.answers.put_nowait(answer)
            return keep
        if self.session_end is not None and time.monotonic() > self.session_end:
            event("expired", conn=self.conn)
            return False
        if api == API_VERSIONS or self.session_end is not None:
            self.up_writer.write(struct.pack(">i", len(request)) + request)
            await self.up_writer.drain()
            self.answers.put_nowait(b"")
            return True
        event("refused", conn=self.conn, mechanism=self.mechanism, reason=f"api-{api}-before-authentication")
        return False

    async def write_answers(self, up_reader):
        while True:
            answer = await self.answers.get()
            if answer is None:
                return
            if answer == b"":
                relayed = await read_frame(up_reader)
                answer = struct.pack(">i", len(relayed)) + relayed
            self.writer.write(answer)
            await self.writer.drain()

    def handshake(self, correlation_id, version, body):
        requested = body.string()
        offered = self.gate.mechanisms
        if version < 1 or requested not in offered:
            event("refused", conn=self.conn, mechanism=requested, reason="mechanism-not-enabled")
            return handshake_answer(correlation_id, UNSUPPORTED_SASL_MECHANISM, offered)
        self.reauthenticating = self.session_end is not None
        self.mechanism, self.pending = requested, None
        return handshake_answer(correlation_id, 0, offered)

    def authenticate(self, correlation_id, version, body):
        """(answer, keep the connection)."""
        token = body.bytes_(compact=version >= 2)
        if self.mechanism is None:
            message = "SaslAuthenticate before SaslHandshake"
            return authenticate_answer(correlation_id, version, ILLEGAL_SASL_STATE, message, b"", 0), False
        try:
            outcome = self.step(token)
        except Refused as refusal:
            event("refused", conn=self.conn, mechanism=self.mechanism, reason=str(refusal).split(":")[0])
            message = f"Authentication failed: {refusal}"
            return authenticate_answer(correlation_id, version, SASL_AUTHENTICATION_FAILED, message, b"", 0), False
        if outcome[0] == "challenge":
            return authenticate_answer(correlation_id, version, 0, None, outcome[1], 0), True
        _, user, server_final, lifetime_ms = outcome
        if self.reauthenticating and user != self.user:
            event("refused", conn=self.conn, mechanism=self.mechanism, reason="principal-changed")
            message = f"Authentication failed: re-authentication as {user}, not {self.user}"
            return authenticate_answer(correlation_id, version, SASL_AUTHENTICATION_FAILED, message, b"", 0), False
        self.user = user
        self.session_end = time.monotonic() + lifetime_ms / 1000 if lifetime_ms else float("inf")
        event("authenticated", conn=self.conn, mechanism=self.mechanism, user=user,
              reauth=int(self.reauthenticating), lifetime_ms=lifetime_ms)
        return authenticate_answer(correlation_id, version, 0, None, server_final, lifetime_ms), True

    def step(self, token):
        """("challenge", bytes) or ("done", user, final bytes, session lifetime in ms)."""
        lifetime = self.gate.lifetime_ms
        if self.mechanism == "PLAIN":
            parts = token.split(b"\x00")
            if len(parts) != 3:
                raise Refused("malformed PLAIN message")
            user, password = parts[1].decode(errors="replace"), parts[2].decode(errors="replace")
            if self.gate.users.get(user) != password:
                raise Refused("Invalid username or password")
            return ("done", user, b"", lifetime)
        if self.mechanism == "OAUTHBEARER":
            if self.pending == "oauth-refused":
                self.pending = None
                raise Refused("invalid token")
            try:
                claims = unsecured_claims(token)
            except ValueError as error:
                self.pending = "oauth-refused"
                report = json.dumps({"status": "invalid_token", "reason": str(error)}).encode()
                event("refused", conn=self.conn, mechanism=self.mechanism, reason="token:" + str(error))
                return ("challenge", report)
            remaining_ms = max(1, int((claims["exp"] - time.time()) * 1000))
            lifetime = min(lifetime, remaining_ms) if lifetime else remaining_ms
            return ("done", claims["sub"], b"", lifetime)
        server = self.pending
        try:
            if server is None:
                credentials = self.gate.scram_credentials[self.mechanism]

                def lookup(user):
                    if user not in credentials:
                        raise ScramException("unknown user")
                    self.scram_user = user
                    return credentials[user]

                server = self.gate.scram[self.mechanism].make_server(lookup)
                server.set_client_first(token.decode())
                self.pending = server
                return ("challenge", server.get_server_first().encode())
            self.pending = None
            server.set_client_final(token.decode())
            return ("done", self.scram_user, server.get_server_final().encode(), lifetime)
        except (ScramException, UnicodeDecodeError) as error:
            self.pending = None
            raise Refused(f"invalid credentials with SASL mechanism {self.mechanism} ({error})")


def unsecured_claims(message):
    """The claims of an unsecured JWT (alg none) in an OAUTHBEARER initial response."""
    try:
        text = message.decode()
    except UnicodeDecodeError:
        raise ValueError("not UTF-8")
    if not text.startswith("n,"):
        raise ValueError("no GS2 header")
    fields = dict(kv.split("=", 1) for kv in text.split("\x01")[1:] if "=" in kv)
    auth = fields.get("auth", "")
    if not auth.startswith("Bearer "):
        raise ValueError("no bearer token")
    parts = auth[len("Bearer "):].split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT")

    def decode(part):
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))

    try:
        header, claims = decode(parts[0]), decode(parts[1])
    except (ValueError, TypeError):
        raise ValueError("undecodable JWT")
    if header.get("alg") != "none":
        raise ValueError("not an unsecured JWT")
    if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("exp"), (int, float)):
        raise ValueError("no sub or exp claim")
    if claims["exp"] <= time.time():
        raise ValueError("expired")
    return claims


class Gate:
    def __init__(self, args):
        host, port = args.broker.rsplit(":", 1)
        self.broker = (host, int(port))
        self.mechanisms = args.mechanism or list(MECHANISMS)
        self.users = dict(user.split(":", 1) for user in args.user or [])
        self.lifetime_ms = args.session_lifetime_ms
        self.scram = {name: ScramMechanism(name) for name in ("SCRAM-SHA-256", "SCRAM-SHA-512")}
        self.scram_credentials = {
            name: {user: mechanism.make_auth_info(password, iteration_count=args.iterations)
                   for user, password in self.users.items()}
            for name, mechanism in self.scram.items()
        }


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--user", action="append")
    parser.add_argument("--mechanism", action="append", choices=MECHANISMS)
    parser.add_argument("--session-lifetime-ms", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=4096)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    gate = Gate(args)
    tls = None
    if args.cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.cert, args.key)
    server = await asyncio.start_server(lambda r, w: Client(gate, r, w).serve(), "127.0.0.1", args.port, ssl=tls)
    event("listening", port=server.sockets[0].getsockname()[1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
