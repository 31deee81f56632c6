"""The SSRF guard: only http(s) URLs resolving to public addresses, unless allowed."""

from __future__ import annotations

import pytest

from app.webhooks import guard

REFUSED_ADDRESSES = [
    "http://127.0.0.1/x",
    "http://127.8.9.10:8080/x",
    "http://localhost/x",
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
    "http://0.0.0.0/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped loopback
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://224.0.0.1/",
    "http://2130706433/",  # 127.0.0.1 as one decimal number
    "http://0x7f000001/",
    "http://100.64.0.1/",  # shared address space (carrier-grade NAT)
    "http://100.100.100.200/",  # a cloud metadata service inside it
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[2002:a00:1::]/",  # 6to4 of 10.0.0.1
    "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/",  # Teredo: client 10.0.0.1
    "http://192.0.2.1/",  # documentation (TEST-NET-1)
]


@pytest.mark.parametrize("url", REFUSED_ADDRESSES)
def test_private_addresses_are_refused_unless_allowed(url):
    with pytest.raises(guard.Refused, match="STEWARD_WEBHOOK_ALLOW_PRIVATE"):
        guard.check(url, allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://8.8.8.8/",
        "file:///etc/passwd",
        "gopher://8.8.8.8/",
        "http://",
        "http:///path",
        "http://u:p@8.8.8.8/",
        "http://8.8.8.8:99999/",
        "javascript:alert(1)",
    ],
)
def test_urls_that_are_not_http_are_refused(url):
    with pytest.raises(guard.Refused):
        guard.check(url, allow_private=True)


def test_public_and_allowed_private_addresses_pass():
    t = guard.check("https://8.8.8.8:8443/hook?a=1", allow_private=False)
    assert (t.scheme, t.host, t.port, t.address) == ("https", "8.8.8.8", 8443, "8.8.8.8")
    assert t.url("https://8.8.8.8:8443/hook?a=1") == "https://8.8.8.8:8443/hook?a=1"
    t = guard.check("http://localhost:9000/h", allow_private=True)
    assert t.address in ("127.0.0.1", "::1")
    assert t.url("http://localhost:9000/h").endswith(":9000/h") and "localhost" not in t.url("http://localhost:9000/h")


def test_an_unresolvable_host_is_refused():
    with pytest.raises(guard.Refused, match="does not resolve"):
        guard.check("http://no-such-host.invalid/", allow_private=True)
