"""The cost of blanking secrets in one error message, by the number of live bearer tokens.

    .venv/bin/python -m bench.redaction_bench [--tokens 100 1000 4096] [--rounds 200]

Fills a registry transport's redaction set the way the token cache does (JWT-shaped tokens of
~850 characters, as distribution's token servers issue), then times ``Transport.message`` (a
typical error line) and ``Transport.body_text`` (a 64 KiB error body that echoes a live token)
and reports the memory the tokens and the set hold together. The token cache never holds more than
``auth.MAX_TOKENS`` per registry identity, which is the largest size worth measuring; the
``--naive`` column is the earlier loop (every secret sorted and replaced, per message) for
comparison.
"""

from __future__ import annotations

import argparse
import base64
import functools
import secrets
import time
import tracemalloc
from collections.abc import Callable

import httpx

from watchdog import config
from watchdog.registry import auth, transport

HEADER = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsIng1YyI6WyJNSUlC"


def jwt_like() -> str:
    body = base64.urlsafe_b64encode(secrets.token_bytes(560)).decode().rstrip("=")
    sig = base64.urlsafe_b64encode(secrets.token_bytes(64)).decode().rstrip("=")
    return f"{HEADER}.{body}.{sig}"


def naive(secrets_: set[str], text: str) -> str:
    for secret in sorted(secrets_, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def per_call(fn: Callable[[], object], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - started) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[100, 1000, auth.MAX_TOKENS])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    print(
        f"{'tokens':>7} {'held MiB':>9} {'message µs':>11} {'64KiB body µs':>14} "
        f"{'naive message µs':>17}"
    )
    for count in args.tokens:
        settings = config.RegistrySettings(
            host="bench.test", username="u", password=config.Secret("pw-bench-secret")
        )
        tracemalloc.start()
        tokens = [jwt_like() for _ in range(count)]
        wire = transport.Transport(settings)
        for token in tokens:
            wire.hold_secret(token)
        wire.redact("warm up")  # builds the plain list once, as the first message would
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        live = tokens[count // 2]
        what = "GET manifest team/app:1.0.0"
        detail = f"HTTP 401 (invalid_token) as robot: token {live} is not valid"
        body = (("x" * 200 + " " + live + " ") * 80)[: 64 * 1024].encode()
        resp = transport.Response(401, httpx.Headers(), body, httpx.URL("http://bench.test/"))
        message = per_call(functools.partial(wire.message, what, detail), args.rounds)
        body_cost = per_call(functools.partial(wire.body_text, resp), max(1, args.rounds // 10))
        assert live not in wire.message(what, detail) and live not in wire.body_text(resp)
        before = functools.partial(naive, set(wire.secrets), detail)
        naive_cost = per_call(before, max(1, args.rounds // 10))
        print(
            f"{count:>7} {held / 2**20:>9.1f} {message * 1e6:>11.1f} {body_cost * 1e6:>14.1f} "
            f"{naive_cost * 1e6:>17.1f}"
        )


if __name__ == "__main__":
    main()
