"""What a server URL typed into the panel means, read without Slicer (``VoteMILib.server_urls``)."""

from __future__ import annotations

import pytest

from VoteMILib.server_urls import is_unencrypted_remote, remote_host, server_host, storable_server_url


def test_a_password_never_reaches_the_scene_and_a_plain_url_is_kept_as_typed():
    stored = storable_server_url("http://alice:s3cret@gpu-box:8000/v1")
    assert "s3cret" not in stored and "alice" not in stored and stored.startswith("http://gpu-box:8000")
    assert storable_server_url("127.0.0.1:11434") == "127.0.0.1:11434"


@pytest.mark.parametrize("url", ["http://localhost:11434", "127.0.0.1:8000", "http://127.3.0.9/v1",
                                 "http://[::1]:8080", "http://LOCALHOST:1234"])
def test_servers_on_this_machine_need_no_confirmation(url):
    assert remote_host(url) is None and not is_unencrypted_remote(url)


def test_another_machine_is_named_and_its_encryption_told():
    assert remote_host("https://gpu-box.example:8000") == ("gpu-box.example", True)
    assert remote_host("203.0.113.7:8000") == ("203.0.113.7", False)
    assert is_unencrypted_remote("http://203.0.113.7:8000") and not is_unencrypted_remote("https://h:1")
    assert server_host("10.0.0.5:8000") == ("http", "10.0.0.5")
