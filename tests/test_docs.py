"""The README and docs/ against the code: every ``samadapt.`` name they mention imports, and every command they
name answers ``--help`` with its help text intact (no ``[...]`` swallowed as rich markup)."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from samadapt.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOTTED = re.compile(r"(?<![\w./-])samadapt(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(r"^\s*from (samadapt(?:\.\w+)*) import ([\w, ]+)$", flags=re.MULTILINE)
COMMAND = re.compile(r"(?<![\w./-])samadapt ([a-z][\w-]*)")
BRACKETED = re.compile(r"(?<!\\)\[[^\]\s]*\]|\\\[[^\]\s]*\]")  # [x] as written, or \[x] (escaped for rich)
WIDE = {"COLUMNS": "240", "TERMINAL_WIDTH": "240"}  # no wrapping inside a bracketed token


def _doc_texts() -> dict[str, str]:
    return {path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8") for path in DOCS}


def _code(text: str) -> list[str]:
    """Fenced blocks and inline code spans of a Markdown text."""
    blocks = re.findall(r"```.*?```", text, flags=re.DOTALL)
    rest = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return blocks + re.findall(r"`([^`\n]+)`", rest)


def documented_names() -> list[tuple[str, str]]:
    """``(doc, dotted name)`` for every ``samadapt.x.y`` and every ``from samadapt.x import a, b`` in the docs."""
    found = set()
    for doc, text in _doc_texts().items():
        found |= {(doc, name.rstrip(".")) for name in DOTTED.findall(text)}
        for module, names in FROM_IMPORT.findall(text):
            found |= {(doc, f"{module}.{name.strip()}") for name in names.split(",") if name.strip()}
    return sorted(found)


def documented_commands() -> list[str]:
    """Subcommands named as ``samadapt <command>`` in code spans and blocks of the docs."""
    return sorted({cmd for text in _doc_texts().values() for chunk in _code(text) for cmd in COMMAND.findall(chunk)})


def registered_commands() -> dict[str, typer.models.CommandInfo]:
    return {info.name: info for info in app.registered_commands}


def resolve(dotted: str) -> object:
    """Import the longest importable module prefix of ``dotted`` and look the rest up as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            target: object = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and module_name.startswith(err.name) and err.name.startswith("samadapt"):
                continue  # this prefix is not a module: try a shorter one
            raise
        for attribute in parts[cut:]:
            target = getattr(target, attribute)  # AttributeError: the docs name something that does not exist
        return target
    raise ImportError(dotted)


def test_the_docs_name_modules_and_commands_at_all():
    names = [name for _, name in documented_names()]
    assert "samadapt.io.read_volume" in names  # the README's DICOM sentence
    assert "samadapt.promise.load_adapter" in names  # a `from samadapt.promise import ...` line of docs/promise.md
    assert {"prepare", "train", "serve", "export-onnx"} <= set(documented_commands())


@pytest.mark.parametrize(("doc", "dotted"), documented_names())
def test_every_documented_name_imports(doc, dotted):
    assert resolve(dotted) is not None, f"{doc} names {dotted}"


def test_the_readme_volume_reader_imports_as_written():
    from samadapt.io import read_volume, write_volume
    from samadapt.io.volume import read_volume as defined_reader
    from samadapt.io.volume import write_volume as defined_writer

    assert read_volume is defined_reader and write_volume is defined_writer


def test_every_documented_command_exists():
    unknown = set(documented_commands()) - set(registered_commands())
    assert not unknown, f"the docs name commands the CLI does not have: {sorted(unknown)}"


def _help_sources(name: str) -> list[str]:
    """The help strings of a command as written in cli.py: its docstring and every parameter's help."""
    info = registered_commands()[name]
    command = typer.main.get_command(app).commands[name]
    return [info.callback.__doc__ or "", *(getattr(param, "help", None) or "" for param in command.params)]


def _flat(text: str) -> str:
    """Help output without rich's box drawing and line breaks, words separated by single spaces."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("name", documented_commands())
def test_help_of_every_documented_command_keeps_its_brackets(name):
    result = CliRunner().invoke(app, [name, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    shown = _flat(result.output)
    assert "Usage:" in shown and name in shown
    for source in _help_sources(name):
        for token in BRACKETED.findall(source):
            literal = token.removeprefix("\\")
            # rich reads an unescaped "[word]" as a style tag and drops it: the help must escape it as "\["
            assert literal in shown, f"`samadapt {name} --help` lost {literal!r}: write it as \\{literal}"


def test_serve_help_names_both_extras_literally():
    """The reported case, through the installed entry point as a user runs it (rich output on a terminal)."""
    env = {**os.environ, **WIDE}
    result = subprocess.run([sys.executable, "-m", "samadapt", "serve", "--help"], capture_output=True, text=True,
                            env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    shown = _flat(result.stdout)
    assert "pip install 'samadapt[export]'" in shown
    assert "pip install 'samadapt[serve]'" in shown
