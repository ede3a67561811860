"""What the Slicer panel asks of its child process, as one object, and the command line that carries it.

The panel builds its :class:`DescribeRequest` with :func:`describe_request` (empty settings take VoteMI's
defaults here, once), fills a :class:`ChildRun` (the volumes already written to files, the prompt by
:func:`write_prompt_file`), and :func:`child_arguments` turns it into the arguments of
``python -m VoteMILib.cli select|describe ... --events``; the CLI's own parser reads them back, so the panel and ``votemi`` cannot drift apart (a test parses every field back).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from .names import DEFAULT_BACKEND, DEFAULT_LANGUAGE, DEFAULT_SERVER_URL, DEFAULT_TIMEOUT_S, PLANES


@dataclass(frozen=True)
class DescribeRequest:
    """The model to ask and how: the describe half of a run.

    Parameters
    ----------
    server : str
        Server URL (ignored by the in-process backend).
    backend : str
        ``openai``, ``ollama`` or ``inprocess`` (:data:`VoteMILib.names.BACKENDS`).
    model : str
        Model name, or the model folder for ``inprocess``; empty for the server's only model.
    language : str
        Report language.
    timeout_s : float
        Longest time the report may take.
    prompt_file : str or None
        A prompt template file; None for VoteMI's prompt.
    prompt : str
        A prompt template not yet written to a file (:func:`write_prompt_file` writes it before the run starts;
        the command line carries files only, so a long template never meets a command-line length limit).
    window : tuple of float or None
        (low, high) intensity window the slices are rendered with; None for VoteMI's choice.
    examples_dir : str or None
        Folder of worked examples sent before the question (``--examples``); None for none.
    """

    server: str = DEFAULT_SERVER_URL
    backend: str = DEFAULT_BACKEND
    model: str = ""
    language: str = DEFAULT_LANGUAGE
    timeout_s: float = float(DEFAULT_TIMEOUT_S)
    prompt_file: str | None = None
    window: tuple | None = None
    examples_dir: str | None = None
    prompt: str = ""


def describe_request(server: str = "", backend: str = DEFAULT_BACKEND, model: str = "", language: str = "",
                     timeout_s: float = DEFAULT_TIMEOUT_S, prompt: str = "", window=None,
                     examples_dir: str = "") -> DescribeRequest:
    """A :class:`DescribeRequest` from settings as the panel holds them: text stripped, an empty server or
    language taking VoteMI's default, an empty prompt or examples folder meaning none."""
    return DescribeRequest(server=server.strip() or DEFAULT_SERVER_URL, backend=backend, model=model.strip(),
                           language=language.strip() or DEFAULT_LANGUAGE, timeout_s=float(timeout_s),
                           window=None if window is None else tuple(window), examples_dir=examples_dir.strip() or None,
                           prompt=prompt.strip())


def write_prompt_file(request: DescribeRequest, folder: str) -> DescribeRequest:
    """``request`` with its prompt template written to ``folder``/prompt.txt (unchanged if it has none)."""
    if not request.prompt:
        return request
    from .outputs import write_atomic

    path = write_atomic(os.path.join(folder, "prompt.txt"), request.prompt, what="prompt file")
    return replace(request, prompt_file=path, prompt="")


@dataclass(frozen=True)
class ChildRun:
    """One Select or Select & Describe run, its inputs as files.

    Parameters
    ----------
    image : str
        The input volume's file.
    planes : tuple of str
    slices_per_plane : int
        Voted slices per plane (``--slices-per-plane`` of the command line).
    mode : str or None
        Selection mode; None with a guide means the guided slices only.
    extras : tuple of str
        Files of the other sequences.
    mask : str or None
        Label map of the guide segments on the input's grid.
    label_names : tuple of (int, str)
        Segment names by label of ``mask``.
    points : tuple of (float, float, float)
        Guide points, RAS mm.
    describe : DescribeRequest or None
        None selects only.
    names : tuple of str
        Names of the image and then of each extra, as reports and prompts show them (the files' own names are
        ASCII, see :func:`volume_file_name`).
    """

    image: str
    planes: tuple = PLANES
    slices_per_plane: int = 3
    mode: str | None = "findings"
    extras: tuple = ()
    mask: str | None = None
    label_names: tuple = ()
    points: tuple = ()
    describe: DescribeRequest | None = field(default=None)
    names: tuple = ()

    def relative_to(self, folder: str) -> "ChildRun":
        """This run with its input files given relative to ``folder``, the folder the child starts in.

        The run folder lies under the user's profile, whose name may hold letters the child's narrow-character
        file APIs (ITK's on Windows) cannot spell; paths inside it are ASCII by :func:`volume_file_name`.
        """
        def relative(path):
            return None if path is None else os.path.relpath(path, folder)

        describe = self.describe
        if describe is not None and describe.prompt_file:
            describe = replace(describe, prompt_file=relative(describe.prompt_file))
        return replace(self, image=relative(self.image), extras=tuple(relative(p) for p in self.extras),
                       mask=relative(self.mask), describe=describe)


def volume_file_name(number: int) -> str:
    """The file of the run's ``number``-th volume (0: the input): ASCII whatever the node is called."""
    return f"volume-{int(number)}.nrrd"


def child_arguments(run: ChildRun) -> list:
    """The ``votemi`` arguments of ``run``, with ``--events --quiet`` (machine-readable events, no summaries)."""
    arguments = ["describe" if run.describe is not None else "select", run.image, "--planes", ",".join(run.planes),
                 "--slices-per-plane", str(int(run.slices_per_plane)), "--events", "--quiet"]
    if run.mode is not None:
        arguments += ["--mode", run.mode]
    for path in run.extras:
        arguments += ["--extra", path]
    for name in run.names:
        arguments += ["--volume-name", name]
    if run.mask is not None:
        arguments += ["--mask", run.mask]
    for number, name in run.label_names:
        arguments += ["--label-name", f"{int(number)}={name}"]
    # "--point=..." keeps a negative coordinate from reading as an option; repr keeps every digit.
    arguments += [f"--point={float(r)!r},{float(a)!r},{float(s)!r}" for r, a, s in run.points]
    if run.describe is not None:
        arguments += _describe_arguments(run.describe)
    return arguments


def _describe_arguments(request: DescribeRequest) -> list:
    if request.prompt:
        raise ValueError("the prompt template goes to the child as a file: write_prompt_file(request, folder) first")
    arguments = ["--server", request.server, "--backend", request.backend, "--language", request.language,
                 "--timeout", repr(float(request.timeout_s))]
    if request.model:
        arguments += ["--model", request.model]
    if request.prompt_file:
        arguments += ["--prompt-file", request.prompt_file]
    if request.window is not None:
        low, high = request.window
        arguments += ["--window", repr(float(low)), repr(float(high))]
    if request.examples_dir:
        arguments += ["--examples", request.examples_dir]
    return arguments
