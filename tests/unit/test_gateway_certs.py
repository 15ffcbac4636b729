"""A gateway's certificate files: checked before they are served; a bad replacement keeps the last good pair."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from meshline.security.gateway_certs import CertificateFiles, CertificateProblem, check_pair
from meshline.testing.tls_certs import TestCA, write_pair
from meshline.xds import names


def test_a_key_of_another_certificate_and_an_expired_certificate_are_refused_with_the_fix() -> None:
    ca = TestCA.make()
    chain, _ = ca.issue(["web.example.test"])
    _, other_key = ca.issue(["web.example.test"])
    with pytest.raises(CertificateProblem, match=r"web/tls.key is not the key of web/tls.crt .*put the matching key"):
        check_pair("web", chain, other_key)
    old_chain, old_key = ca.issue(["web.example.test"], valid=datetime.timedelta(minutes=1),
                                  not_before=datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2))  # fmt: skip
    with pytest.raises(CertificateProblem, match=r"web/tls.crt expired on .*; renew it"):
        check_pair("web", old_chain, old_key)
    with pytest.raises(CertificateProblem, match="holds no PEM certificate"):
        check_pair("web", b"junk", old_key)


def test_the_watcher_serves_good_pairs_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    ca = TestCA.make()
    ca.issue_to(tmp_path / "web", ["web.example.test"])
    published: list[dict[str, object]] = []
    files = CertificateFiles(tmp_path, lambda s: published.append(dict(s)))
    assert files.scan() is True
    secret = names.gateway_certificate_secret("web")
    first = files.secrets()[secret]
    # a half-done replacement (a new key, the old certificate) is not served
    chain, key = ca.issue(["web.example.test"])
    write_pair(tmp_path / "web", (tmp_path / "web" / "tls.crt").read_bytes(), key)
    assert files.scan() is False
    assert "is not the key of" in files.problems["web"]
    assert files.secrets()[secret] == first
    write_pair(tmp_path / "web", chain, key)
    assert files.scan() is True and files.secrets()[secret] != first and not files.problems
    (tmp_path / "web" / "tls.crt").unlink()
    assert files.scan() is True and files.secrets() == {}
