"""Small checks of the fault proxy itself (tests/support/faultproxy.py), with plain httpx/sockets.

The proxy is what tests/system/test_faults.py trusts to inject each fault; these make sure each fault
is really what it claims to be on the wire.
"""

from __future__ import annotations

import email.utils
import json
import socket
import time

import httpx
import pytest

from tests.support import faultproxy, images
from watchdog import models
from watchdog.registry import media

pytestmark = pytest.mark.registry

ACCEPT = {"Accept": media.ACCEPT}


@pytest.fixture
def pushed(repo: str, pusher: images.Pusher) -> images.Pushed:
    return pusher.image(repo, "1.0.0", seed="proxy")


def manifest_url(proxy: faultproxy.FaultProxy, repo: str, ref: str = "1.0.0") -> str:
    return f"{proxy.url}/v2/{repo}/manifests/{ref}"


def test_statuses_rate_limits_and_flapping(fault_proxy, repo, pushed):
    url = manifest_url(fault_proxy, repo)
    with httpx.Client(headers=ACCEPT) as http:
        fault_proxy.rate_limit("GET", "/manifests/", 7, times=1)
        first = http.get(url)
        assert first.status_code == 429 and first.headers["retry-after"] == "7"
        fault_proxy.rate_limit("GET", "/manifests/", 30, http_date=True, times=1)
        dated = http.get(url).headers["retry-after"]
        when = email.utils.parsedate_to_datetime(dated).timestamp()
        assert 20 < when - time.time() <= 31
        rule = fault_proxy.fail("GET", "/manifests/", 503, every=2, times=2)
        codes = [http.get(url).status_code for _ in range(5)]
    assert codes == [503, 200, 503, 200, 200]  # flaps, then `times` is spent
    assert (rule.hits, rule.applied) == (3, 2)  # a spent rule no longer matches


def test_reset_is_a_tcp_rst_and_drop_a_plain_close(fault_proxy, repo, pushed):
    path = f"/v2/{repo}/manifests/1.0.0"
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    fault_proxy.add("GET", "/manifests/", reset=True, times=1)
    with socket.create_connection(("127.0.0.1", fault_proxy.port), timeout=5) as s:
        s.sendall(request)
        with pytest.raises(ConnectionResetError):
            s.recv(1024)
            s.recv(1024)
    fault_proxy.add("GET", "/manifests/", drop=True, times=1)
    with socket.create_connection(("127.0.0.1", fault_proxy.port), timeout=5) as s:
        s.sendall(request)
        assert s.recv(1024) == b""  # EOF without an answer


def test_truncated_and_cut_bodies(fault_proxy, repo, pushed):
    url = manifest_url(fault_proxy, repo)
    with httpx.Client(headers=ACCEPT) as http:
        fault_proxy.truncate("GET", "/manifests/", keep=0.5, times=1)
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(url)
        fault_proxy.cut_json("GET", "/manifests/", times=1)
        cut = http.get(url)
        assert cut.status_code == 200 and cut.content == pushed.body[: len(pushed.body) // 2]
        assert cut.headers["docker-content-digest"] == models.sha256_digest(cut.content)
        with pytest.raises(json.JSONDecodeError):
            json.loads(cut.content)
        fault_proxy.malformed_json("GET", "/manifests/", times=1)
        bad = http.get(url)
        assert bad.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(bad.content)


def test_lies(fault_proxy, repo, pusher, pushed):
    other = pusher.image(repo, None, seed="another image")
    url = manifest_url(fault_proxy, repo)
    with httpx.Client(headers=ACCEPT) as http:
        fault_proxy.lie_digest(None, "/manifests/", times=2)
        lied = http.get(url)
        assert lied.content == pushed.body
        assert lied.headers["docker-content-digest"] != pushed.digest
        assert http.head(url).headers["docker-content-digest"] != pushed.digest
        fault_proxy.serve_instead("GET", "/manifests/", other.body, other.media_type, times=1)
        swapped = http.get(url)
        assert swapped.content == other.body
        assert swapped.headers["docker-content-digest"] == other.digest
        fault_proxy.serve_instead(
            "GET", "/manifests/", other.body, other.media_type, header="lie", times=2
        )
        lying = http.get(url)
        assert lying.content == other.body
        assert lying.headers["docker-content-digest"] == pushed.digest
        gone = http.get(manifest_url(fault_proxy, repo, "9.9.9"))  # upstream 404: still a lie
        assert gone.status_code == 200 and gone.content == other.body
        assert http.get(url).content == pushed.body  # the rules are spent


def test_huge_and_endless_bodies(fault_proxy, repo, pushed):
    url = manifest_url(fault_proxy, repo)
    size = 6 * 1024 * 1024
    with httpx.Client(headers=ACCEPT, timeout=5) as http:
        fault_proxy.huge("GET", "/manifests/", size, times=1)
        big = http.get(url)
        assert len(big.content) == size == int(big.headers["content-length"])
        fault_proxy.stream("GET", "/manifests/", chunk=256 * 1024, times=1)
        got = 0
        with http.stream("GET", url) as resp:
            assert "content-length" not in resp.headers
            for chunk in resp.iter_bytes():
                got += len(chunk)
                if got > 8 * 1024 * 1024:
                    break  # it would go on for ever
        assert got > 8 * 1024 * 1024
        fault_proxy.stream("GET", "/manifests/", chunk=1, interval=0.05, times=1)
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout), http.stream("GET", url, timeout=0.02) as resp:
            resp.read()
        assert time.monotonic() - started < 2
