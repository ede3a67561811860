"""The panel's run settings reach the child unchanged: every field of a ChildRun read back by votemi's parser."""

from __future__ import annotations

import pytest

from VoteMILib.child_run import (ChildRun, DescribeRequest, child_arguments, describe_request,
                                 write_prompt_file)
from VoteMILib.cli import build_parser
from VoteMILib.names import DEFAULT_LANGUAGE, DEFAULT_SERVER_URL


def _parsed(run):
    return build_parser().parse_args(child_arguments(run))


def test_a_select_run_round_trips_through_the_parser():
    run = ChildRun(image="/tmp/run-1/0/MRHead.nrrd", planes=("axial", "sagittal"), slices_per_plane=5,
                   mode="representative", extras=("/tmp/run-1/1/FLAIR.nrrd", "/tmp/run-1/2/T2.nrrd"))
    args = _parsed(run)
    assert args.func.__name__ == "run_select" and args.image == run.image
    assert tuple(args.planes) == run.planes and args.slices_per_plane == 5 and args.mode == "representative"
    assert tuple(args.extra) == run.extras and args.events and args.quiet
    assert args.mask is None and args.point == [] and args.label_name == []
    arguments = child_arguments(run)
    assert arguments[arguments.index("--slices-per-plane") + 1] == "5" and "--top" not in arguments


def test_a_guided_describe_run_round_trips_with_every_digit_and_negative_points():
    request = DescribeRequest(server="http://10.0.0.5:8000/v1", backend="ollama", model="medgemma:4b",
                              language="Deutsch", timeout_s=45.5, prompt_file="/tmp/run-2/prompt.txt",
                              window=(-160.25, 240.125), examples_dir="/data/worked examples")
    run = ChildRun(image="/tmp/run-2/0/CT.nrrd", slices_per_plane=2, mode=None,
                   mask="/tmp/run-2/guide-segments.nrrd", label_names=((1, "lung nodule 1"), (2, "liver = lesion")),
                   points=((-12.345678901234, 30.0, -0.000001), (1e-9, -250.5, 41.0)), describe=request)
    args = _parsed(run)
    assert args.func.__name__ == "run_describe" and args.mode is None  # guided slices only
    assert args.mask == run.mask and args.label_name == [(1, "lung nodule 1"), (2, "liver = lesion")]
    assert [tuple(point) for point in args.point] == list(run.points)
    assert (args.server, args.backend, args.model, args.language) == (request.server, "ollama", "medgemma:4b",
                                                                       "Deutsch")
    assert args.timeout == 45.5 and args.prompt_file == request.prompt_file
    assert tuple(args.window) == request.window and args.examples == request.examples_dir


def test_defaults_are_the_command_lines_defaults():
    args = _parsed(ChildRun(image="a.nrrd", describe=DescribeRequest()))
    defaults = build_parser().parse_args(["describe", "a.nrrd"])
    for name in ("planes", "slices_per_plane", "mode", "server", "backend", "model", "language", "timeout", "window",
                 "examples"):
        assert getattr(args, name) == getattr(defaults, name) or name == "mode", name
    assert args.mode == "findings" and args.server == DEFAULT_SERVER_URL and args.language == DEFAULT_LANGUAGE


@pytest.mark.parametrize("field, value", [("slices_per_plane", 0), ("planes", ("axial", "oblique")),
                                          ("mode", "loudest")])
def test_settings_the_child_would_refuse_are_refused_by_its_parser(field, value):
    with pytest.raises(SystemExit):
        _parsed(ChildRun(image="a.nrrd", **{field: value}))


def test_empty_panel_settings_take_the_defaults_once():
    request = describe_request(server="  ", model=" llava ", language="", timeout_s=60, prompt="  ", examples_dir=" ",
                               window=[-100.0, 300.0])
    assert request == DescribeRequest(server=DEFAULT_SERVER_URL, model="llava", language=DEFAULT_LANGUAGE,
                                      timeout_s=60.0, window=(-100.0, 300.0))


def test_a_prompt_template_reaches_the_child_as_a_file(tmp_path):
    template = "Describe {image_count} slices.\n" + "x" * 40_000  # longer than a Windows command line
    request = describe_request(server="http://127.0.0.1:8000", prompt=template)
    with pytest.raises(ValueError, match="write_prompt_file"):
        child_arguments(ChildRun(image="a.nrrd", describe=request))
    written = write_prompt_file(request, str(tmp_path))
    args = _parsed(ChildRun(image="a.nrrd", describe=written))
    assert args.prompt_file == str(tmp_path / "prompt.txt") and not written.prompt
    assert (tmp_path / "prompt.txt").read_text(encoding="utf-8") == template.strip()
    assert write_prompt_file(describe_request(), str(tmp_path / "none")) == describe_request()


@pytest.mark.parametrize("command", [["describe", "a.nrrd"], ["models"], ["eval", "cases.csv", "--out", "out"]])
def test_backend_and_its_help(command, capsys):
    parser = build_parser()
    assert parser.parse_args([*command, "--backend", "ollama"]).backend == "ollama"
    assert parser.parse_args(command).backend == "openai"
    with pytest.raises(SystemExit):  # 0.1's --protocol is gone
        parser.parse_args([*command, "--protocol", "ollama"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # help lines wrap with the terminal width
    assert "--backend" in shown and "--protocol" not in shown


@pytest.mark.parametrize("command", [["select", "a.nrrd"], ["describe", "a.nrrd"], ["batch", "cases", "--out", "out"]])
def test_slices_per_plane(command, capsys):
    parser = build_parser()
    assert parser.parse_args([*command, "--slices-per-plane", "4"]).slices_per_plane == 4
    assert parser.parse_args(command).slices_per_plane == 3
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--slices-per-plane", "0"])
    assert "argument --slices-per-plane: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # 0.1's --top is gone
        parser.parse_args([*command, "--top", "2"])


def test_a_run_in_its_folder_has_relative_paths_and_the_nodes_names_as_data(tmp_path):
    folder = tmp_path / "Jürgen" / "run-1"
    request = DescribeRequest(prompt_file=str(folder / "prompt.txt"), examples_dir="/data/examples")
    run = ChildRun(image=str(folder / "volume-0.nrrd"), extras=(str(folder / "volume-1.nrrd"),),
                   mask=str(folder / "guide-segments.nrrd"), describe=request, names=("Tête IRM", "FLAIR / 2"))
    args = _parsed(run.relative_to(str(folder)))
    assert (args.image, args.extra, args.mask) == ("volume-0.nrrd", ["volume-1.nrrd"], "guide-segments.nrrd")
    assert args.prompt_file == "prompt.txt" and args.examples == "/data/examples"  # the user's own folder stays
    assert args.volume_names == ["Tête IRM", "FLAIR / 2"]
