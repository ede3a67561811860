"""The panel's server status line: is the model server reachable, which models does it offer.

The check runs ``votemi models --events`` in a child process (started by ``VoteMILogic.startChild``, like
every child of the module) so that a slow or unreachable server never blocks Slicer's GUI; the panel's
poll timer reads its events through :meth:`ServerStatus.poll`.
"""

from __future__ import annotations

import os

import qt
import slicer
from slicer.i18n import tr as _
from VoteMILib.names import DEFAULT_SERVER_URL, INPROCESS

#: Wait after the last edit of the server settings before checking the server (ms).
STATUS_CHECK_DELAY_MS = 800


class ServerStatus:
    """The status line under the model settings and the model list the server offers.

    ``logic`` starts the check's child; ``ui`` is the panel's widgets; ``parameterNode`` returns the panel's
    VoteMIParameterNode (or None); ``startPolling`` starts the panel's poll timer, which calls :meth:`poll`
    while :attr:`check` is not None.
    """

    def __init__(self, logic, ui, parameterNode, startPolling):
        self.logic = logic
        self.ui = ui
        self._parameterNode = parameterNode
        self._startPolling = startPolling
        #: The check under way as (child process, explicit), or None.
        self.check = None
        self._modelsShown = False
        # A check starts shortly after the user stops typing, not on every key.
        self._delayTimer = qt.QTimer()
        self._delayTimer.setSingleShot(True)
        self._delayTimer.setInterval(STATUS_CHECK_DELAY_MS)
        self._delayTimer.timeout.connect(lambda: self.checkServer(explicit=False))

    def close(self):
        self.end()
        self._delayTimer.stop()

    def urlProblem(self):
        """Why the URL in the box (or, from an older scene, in the node) cannot be used, or None."""
        from VoteMISlicerLib.servers import serverUrlProblem

        return serverUrlProblem(self.ui.serverUrlLineEdit.text) or serverUrlProblem(self._parameterNode().serverUrl)

    def urlEdited(self, text):
        """The user typed in the URL box: say at once what is wrong with it, or check it once typing stops."""
        from VoteMISlicerLib.servers import serverUrlProblem

        problem = serverUrlProblem(text)
        if problem:
            self.end()
            self._delayTimer.stop()
            self.ui.serverStatusLabel.text = problem
        else:
            self._delayTimer.start()

    def checkServer(self, explicit: bool) -> None:
        """Update the status line: is the server reachable, which models does it offer."""
        from VoteMILib.server_urls import is_unencrypted_remote
        from VoteMISlicerLib.servers import serverCheckArguments

        node = self._parameterNode()
        if node is None:
            return
        if node.protocol == INPROCESS:
            folder = node.model.strip()
            found = bool(folder) and os.path.isdir(folder)
            self.ui.serverStatusLabel.text = (
                _("In-process model: {folder}").format(folder=folder) if found
                else _("In-process model: choose the model folder as the model"))
            return
        self.end()
        url = node.serverUrl.strip() or DEFAULT_SERVER_URL
        problem = self.urlProblem()
        if problem:
            self.ui.serverStatusLabel.text = problem
            if explicit:
                slicer.util.errorDisplay(problem, windowTitle="VoteMI")
            return
        apiKey = self.ui.apiKeyLineEdit.text.strip()
        if apiKey and not explicit and is_unencrypted_remote(url):
            # The key would cross the network in clear text: only when the user asks for it.
            self.ui.serverStatusLabel.text = _("Server {url}: not checked automatically (plain HTTP to another "
                                               "machine would send the API key unencrypted); Test connection checks "
                                               "it").format(url=url)
            return
        # Only an explicit check probes: the probe asks the model for a few one-token answers.
        self._modelsShown = False
        arguments = serverCheckArguments(url, node.protocol, probe=explicit, model=node.model.strip())
        self.check = (self.logic.startChild(arguments, apiKey=apiKey), explicit)
        self.ui.serverStatusLabel.text = _("Server {url}: checking...").format(url=url)
        self._startPolling()

    def poll(self):
        """Show what the check's child reported since the last poll; end the check when the child has ended."""
        if self.check is None:
            return
        child, explicit = self.check
        for event in child.poll():
            if event.get("event") == "models":
                self._showModels(event.get("server", ""), event.get("models", []))
                self._modelsShown = True
            elif event.get("event") == "capabilities":
                self.ui.serverStatusLabel.text = _("{status}; {capabilities}").format(
                    status=self.ui.serverStatusLabel.text, capabilities=event.get("summary", ""))
            elif event.get("event") == "error" and self._modelsShown:
                # The server answered; only the probe of the model failed.
                self.ui.serverStatusLabel.text = _("{status}; probe failed: {reason}").format(
                    status=self.ui.serverStatusLabel.text, reason=event["message"])
            elif event.get("event") == "error":
                self.ui.serverStatusLabel.text = _("Server unreachable: {reason}").format(reason=event["message"])
                if explicit:
                    slicer.util.errorDisplay(_("The vision-language model server did not answer:\n{reason}").format(
                        reason=event["message"]), windowTitle="VoteMI")
        if child.finished:
            if child.exit_code not in (0, 1):
                self.ui.serverStatusLabel.text = _("Server check failed: {reason}").format(
                    reason=child.stderr_tail() or f"exit code {child.exit_code}")
            self.end()

    def end(self):
        """Stop the check under way, if any (its child is killed)."""
        if self.check is not None:
            self.check[0].kill()
            self.check = None

    def _showModels(self, url, models):
        self.ui.modelsComboBox.clear()
        for model in models:
            self.ui.modelsComboBox.addItem(model)
        self.ui.modelsComboBox.visible = bool(models)
        node = self._parameterNode()
        if len(models) == 1 and not node.model.strip():
            node.model = models[0]
        chosen = node.model.strip()
        if not models:
            self.ui.serverStatusLabel.text = _("Server {url}: reachable, but it offers no models").format(url=url)
        elif chosen and chosen not in models:
            self.ui.serverStatusLabel.text = _("Server {url}: reachable; model {model} not offered (offers: {models})"
                                               ).format(url=url, model=chosen, models=", ".join(models[:5]))
        else:
            self.ui.serverStatusLabel.text = _("Server {url}: reachable; model {model}").format(
                url=url, model=chosen or ", ".join(models[:5]))

    def onModelChosen(self, index) -> None:
        """A model picked from the server's list becomes the model, and the status line says so."""
        node = self._parameterNode()
        if index >= 0 and node:
            node.model = self.ui.modelsComboBox.itemText(index)
            self.checkServer(explicit=False)
