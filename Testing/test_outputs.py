"""Output files: checked before work, written atomically, errors naming the file."""

from __future__ import annotations

import json
import os
import stat

import pytest

from VoteMILib.outputs import OutputError, check_output_file, check_output_folder, write_atomic, write_json_atomic

def test_write_atomic_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"b": [1, 2]})
    assert json.loads(target.read_text(encoding="utf-8")) == {"b": [1, 2]}
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_write_atomic_keeps_old_file_when_the_new_content_cannot_be_made(tmp_path):
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(OutputError, match="out.json"):
        write_json_atomic(target, {"a": float("nan")})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_atomic_keeps_the_permissions_of_the_file_it_replaces(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old")
    os.chmod(target, 0o640)
    write_atomic(target, "new")
    assert target.read_text(encoding="utf-8") == "new"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640


def test_errors_name_the_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=r"cannot write report .*blocker.*|cannot write report .*file") as caught:
        write_atomic(blocker / "inside.md", "text", what="report")
    assert str(caught.value).count("\n") == 0 and "inside.md" in str(caught.value)
    with pytest.raises(OutputError, match="it is a folder"):
        check_output_file(tmp_path, "selection JSON")
    with pytest.raises(OutputError, match="it is a file, not a folder"):
        check_output_folder(blocker, "PNG folder")

