"""What ``lossatlas --help`` and ``lossatlas COMMAND --help`` show a newcomer: the help is
rendered as Markdown (``rich_markup_mode="markdown"``), so a glob's ``*`` must survive as a
character and a docstring's wrapped lines must flow as one paragraph."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from lossatlas.cli import app

COMMANDS = typer.main.get_command(app).commands


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_summary_flows_as_one_paragraph(name):
    # a continuation line indented differently from the others keeps its indentation in the
    # command list (``lossatlas --help``): "rerun the     same command"
    summary = COMMANDS[name].help.split("\n\n")[0].replace("\n", " ")
    assert not re.search(r"\S {2,}\S", summary), summary


@pytest.mark.parametrize("name", ["curve", "surface", "interpolate", "trajectory"])
def test_glob_examples_keep_their_stars(name):
    out = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "300"}).output
    assert "'transformer.h.*.attn.*'" in out
    assert "'*.bias'" in out
