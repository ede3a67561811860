"""What a server URL typed into the Slicer panel means before anything is sent: a password in it, where it
points (this machine or another) and whether the connection is encrypted. Standard library only, no Slicer.

The panel keeps its settings in the scene and in Slicer's settings, so a URL with a user name and password is
stored without them (:func:`storable_server_url`) and refused for a run; images go to another machine only
after the user confirmed (:func:`remote_host`); an API key is not sent unasked over plain HTTP to another
machine (:func:`is_unencrypted_remote`). The messages themselves are written (and translated) by the module.
"""

from __future__ import annotations

from urllib.parse import urlparse

from .vlm.urls import redact_url, url_has_credentials

__all__ = ["url_has_credentials", "storable_server_url", "server_host", "is_loopback", "is_unencrypted_remote",
           "remote_host"]


def storable_server_url(url: str) -> str:
    """``url`` as the scene and the settings may keep it: without a user name and password."""
    return redact_url(url) if url_has_credentials(url) else url


def server_host(url: str) -> tuple:
    """``(scheme, host)`` of a server URL, host lower-case and "" if the URL has none; a bare ``host:port`` is
    read as http."""
    parsed = urlparse(url if "://" in url else "http://" + url)
    return parsed.scheme, (parsed.hostname or "").lower()


def is_loopback(host: str) -> bool:
    """True for a host name of this machine (``localhost``, ``::1``, ``127.x.x.x``)."""
    return host in ("localhost", "::1") or host.startswith("127.")


def is_unencrypted_remote(url: str) -> bool:
    """True for a plain-http server on another machine."""
    scheme, host = server_host(url)
    return scheme != "https" and not is_loopback(host)


def remote_host(url: str):
    """``(host, encrypted)`` of a server on another machine (host is ``url`` itself if it names none), or None for
    a server on this machine."""
    scheme, host = server_host(url)
    if is_loopback(host):
        return None
    return host or url, scheme == "https"
