"""The panel's words about a model server URL (what :mod:`VoteMILib.server_urls` finds, translated) and the
arguments of the child that checks a server."""

from __future__ import annotations

from slicer.i18n import tr as _


def serverUrlProblem(url):
    """Why the panel cannot use ``url``, or None.

    The panel keeps its settings in the scene and in Slicer's settings, so a password in the URL
    would be saved there; it is refused (the command line sends such URLs as Basic auth).
    """
    from VoteMILib.server_urls import url_has_credentials

    if url_has_credentials(url):
        return _("The server URL holds a user name and password, which the panel would save in the scene. "
                 "Remove them from the URL and enter the server's key as API key.")
    return None


def remoteServerWarning(url):
    """A warning to confirm before images go to ``url``, or None for a server on this machine."""
    from VoteMILib.server_urls import remote_host

    remote = remote_host(url)
    if remote is None:
        return None
    host, encrypted = remote
    warning = _("The slice images of this volume will be sent to {host}, a server on another machine.").format(
        host=host)
    if not encrypted:
        warning += " " + _("The connection is plain HTTP: the images and the report cross the network "
                           "unencrypted. Use https:// for servers beyond this machine.")
    return warning + " " + _("Send them?")


def serverCheckArguments(url, backend, probe=False, model=""):
    """Arguments of ``votemi models --events``: the server's models; with ``probe``, also what the model accepts
    (``--probe``: images, images per request, context length, JSON schema)."""
    arguments = ["models", "--server", url, "--backend", backend, "--timeout", "10", "--events"]
    if probe:
        arguments += ["--probe"] + (["--model", model] if model else [])
    return arguments
