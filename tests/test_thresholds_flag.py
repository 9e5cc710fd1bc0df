"""One score-threshold flag across commands (issue 18: `--score-threshold` on export/visualize,
`--thresholds` on review): `--thresholds` everywhere, the old name a hidden alias with a notice.

Through the real click commands; export runs on Parquet shards written by the tests' writer.
"""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner
from test_merge_eval_viz import _box_rle, _instance, _row, write_shards

from ntt_batch.cli import main

FILTERING = ("export", "visualize", "review")  # the commands that keep or draw instances by score


def _commands(group: click.Group, prefix: str = ""):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


def _flags(cmd: click.Command, *, hidden: bool) -> set[str]:
    return {o for p in cmd.params if isinstance(p, click.Option) and p.hidden == hidden for o in p.opts}


def test_one_visible_name_for_the_score_threshold_everywhere():
    for name, cmd in _commands(main):
        visible = _flags(cmd, hidden=False)
        assert not {f for f in visible if "score" in f}, (name, visible)  # no second spelling anywhere
        if name in FILTERING:
            assert "--thresholds" in visible, name
            assert "--score-threshold" in _flags(cmd, hidden=True), name  # the old name still parses
        help_text = CliRunner().invoke(main, [*name.split(), "--help"]).output
        assert "--score-threshold" not in help_text, name


@pytest.fixture
def shards(tmp_path):
    insts = [_instance(1, "cat", s, (0, 0, 10, 10), _box_rle(50, 50, (0, 0, 10, 10))) for s in (0.2, 0.6, 0.9)]
    return write_shards(tmp_path / "shards", [_row(1, "/data/a.jpg", 50, 50, insts)])


def _export(shards, out, *flags):
    return CliRunner().invoke(
        main, ["export", "--shards", str(shards), "--out", str(out), "--format", "results", *flags]
    )


def test_old_name_works_with_a_notice_and_gives_the_same_result(shards, tmp_path):
    new = _export(shards, tmp_path / "new.json", "--thresholds", "0.5")
    assert new.exit_code == 0, new.output
    assert "notice" not in new.stderr
    old = _export(shards, tmp_path / "old.json", "--score-threshold", "0.5")
    assert old.exit_code == 0, old.output
    (notice,) = [ln for ln in old.stderr.splitlines() if "--score-threshold" in ln]
    assert notice == "notice: --score-threshold is now --thresholds; the old name keeps working"
    kept = json.loads((tmp_path / "new.json").read_text())
    assert sorted(d["score"] for d in kept) == [0.6, 0.9]
    assert json.loads((tmp_path / "old.json").read_text()) == kept
    # a thresholds file, by the new name
    th = tmp_path / "th.yaml"
    th.write_text("default: 0.1\ncat: 0.8\n")
    r = _export(shards, tmp_path / "map.json", "--thresholds", str(th))
    assert r.exit_code == 0, r.output
    assert [d["score"] for d in json.loads((tmp_path / "map.json").read_text())] == [0.9]


@pytest.mark.parametrize("command", FILTERING)
def test_both_names_at_once_is_a_usage_error(command, shards, tmp_path):
    args = {
        "export": ["--shards", str(shards), "--out", str(tmp_path / "x.json"), "--format", "results"],
        "visualize": ["--shards", str(shards), "--out", str(tmp_path / "viz")],
        "review": ["--shards", str(shards), "--out", str(tmp_path / "rev")],
    }[command]
    r = CliRunner().invoke(main, [command, *args, "--thresholds", "0.5", "--score-threshold", "0.4"])
    assert r.exit_code == 2, r.output
    assert "give --thresholds only (--score-threshold is its old name)" in r.output
    assert not any((tmp_path / n).exists() for n in ("x.json", "viz", "rev"))
