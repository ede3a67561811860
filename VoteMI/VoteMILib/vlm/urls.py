"""Server URLs: parsing, and the form in which they may be shown or stored.

A user name and password in the server URL (``http://user:pass@host``) are sent as HTTP Basic
authentication and appear nowhere else: every URL shown or stored is :func:`redact_url`'s.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from .dialects import DIALECTS
from .errors import VLMError



@dataclass(frozen=True)
class ServerAddress:
    """A parsed server URL.

    ``query`` (already encoded) goes with every request, its values masked in :attr:`url`;
    ``username`` and ``password`` go only into the Authorization header. None of them is in ``repr``.
    """

    scheme: str
    host: str
    port: int
    base_path: str
    query: str = field(default="", repr=False)
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        """The URL to show or store: no credentials, query values masked."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path}" + (f"?{_mask_query(self.query)}"
                                                                        if self.query else "")

    @property
    def has_credentials(self) -> bool:
        return bool(self.username or self.password)

    def basic_authorization(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.password}".encode("utf-8")).decode("ascii")
        return f"Basic {token}"


def check_authorization(address: ServerAddress, api_key: str) -> None:
    """Refuse credentials in the URL together with an API key: both would be the Authorization header."""
    if address.has_credentials and (api_key or "").strip():
        raise VLMError(f"the server URL {address.url} carries a user name and password and an API key is set too; "
                       "both go in the Authorization header, so give only one")


def _mask_query(query: str) -> str:
    return re.sub(r"=[^&#]*", "=***", query)


def redact_url(url) -> str:
    """``url`` as it may be shown or stored: user name and password removed, query values masked.

    Works on any text, also on URLs too malformed to parse (everything up to the last ``@`` after
    the scheme is dropped).
    """
    text = " ".join(str(url or "").split())
    scheme, separator, rest = text.partition("://")
    if not separator:
        scheme, rest = "", text
    if "@" in rest:
        rest = rest.rpartition("@")[2]
    rest, question, query = rest.partition("?")
    rest = rest + (question + _mask_query(query.partition("#")[0]) if question else "")
    return f"{scheme}://{rest}" if separator else rest


def url_has_credentials(url) -> bool:
    """True if ``url`` names a user (``http://user:password@host``), which must never be stored or shown."""
    text = str(url or "").strip()
    authority = text.partition("://")[2] if "://" in text else text
    return "@" in re.split(r"[/?#]", authority, maxsplit=1)[0]


def parse_server_url(url: str, protocol: str = "openai") -> ServerAddress:
    """Parse ``host:port``, ``http://host:port``, ``https://host/prefix`` (a trailing ``/v1`` or ``/api`` is dropped).

    Raises
    ------
    VLMError
        For an empty or malformed URL or a scheme other than http/https.
    """
    text = (url or "").strip()
    if not text:
        raise VLMError("no server URL given")
    if "://" not in text:
        text = "http://" + text
    shown = redact_url(text)
    # Never quote urlsplit's own messages: they can hold pieces of a password.
    encode = " (percent-encode / ? # @ : in a user name or password)" if "@" in text else ""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise VLMError(f"invalid server URL '{shown}': the port must be a number from 0 to 65535{encode}") from None
    if parts.scheme not in ("http", "https"):
        raise VLMError(f"invalid server URL '{shown}': use http:// or https://")
    if not parts.hostname:
        raise VLMError(f"invalid server URL '{shown}': no host name{encode}")
    if "@" in parts.path + parts.query + parts.fragment:
        raise VLMError(f"invalid server URL '{shown}': '@' after the host name{encode}")
    path = quote(parts.path.rstrip("/"), safe="/%!$&'()*+,;=:-._~")
    dialect = DIALECTS.get(protocol)  # each protocol's API prefix, e.g. "/v1"
    suffix = dialect.url_suffix if dialect is not None else ""
    if suffix and path.endswith(suffix):
        path = path[: -len(suffix)]
    query = urlencode(parse_qsl(parts.query, keep_blank_values=True))
    return ServerAddress(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path,
                         query, unquote(parts.username or ""), unquote(parts.password or ""))
