"""The man pages: every option of `zcsync --help` is documented, and groff has nothing to warn about."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest

import zcsync
from zcsync import cli
from zcsync.cli import command

ROOT = Path(__file__).resolve().parents[2]
MAN1 = ROOT / "man" / "zcsync.1"
MAN5 = ROOT / "man" / "zcsyncd.conf.5"
PAGES = [MAN1, MAN5]

# An option word in plain text: "-a", "--dry-run", "-0"; not the "-" inside "rsync-style".
_OPTION_WORD = re.compile(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)")


def plain(line: str) -> str:
    """The text of one line of man(7) source: escapes resolved, font changes and quotes dropped."""
    line = re.sub(r"\\f(\[[^\]]*\]|\(..|.)", "", line)  # \fB \fR \f[CR] \f(CW
    line = line.replace("\\-", "-").replace("\\(aq", "'").replace("\\(ti", "~")
    line = line.replace("\\~", " ").replace("\\ ", " ").replace("\\&", "").replace("\\c", "")
    line = line.replace("\\e", "\\")
    if line.startswith((".", "'")):
        line = line.split(None, 1)[1] if " " in line else ""  # drop the macro name
        line = line.replace('"', "")
    return line


def sections(path: Path) -> dict[str, list[str]]:
    """The source lines of each .SH section, by section name."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith('.\\"'):
            continue
        if line.startswith(".SH "):
            current = line[4:].strip().strip('"')
            out[current] = []
        elif current:
            out[current].append(line)
    return out


def tags(lines: list[str]) -> list[str]:
    """The plain text of every .TP tag (the line after .TP)."""
    return [plain(lines[i + 1]) for i, line in enumerate(lines[:-1]) if line.startswith(".TP")]


def cli_option_strings() -> set[str]:
    """Every option string `zcsync --help` lists: short, long, aliases and --no- forms."""
    ctx = click.Context(command, info_name="zcsync", **command.context_settings)
    names: set[str] = set()
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def documented_option_strings() -> set[str]:
    """The option words in the .TP tags of zcsync.1's OPTIONS section."""
    words: set[str] = set()
    for tag in tags(sections(MAN1)["OPTIONS"]):
        words.update(_OPTION_WORD.findall(tag))
    return words


def test_the_cli_has_options_to_check():
    names = cli_option_strings()
    assert {"-a", "--archive", "--no-perms", "--zc", "-h", "--help"} <= names


@pytest.mark.parametrize("option", sorted(cli_option_strings()))
def test_every_cli_option_is_in_zcsync_1(option):
    assert option in documented_option_strings(), (
        f"{option} is an option of `zcsync --help` but has no .TP entry in the OPTIONS "
        f"section of {MAN1.relative_to(ROOT)}: document it there")


def test_zcsync_1_documents_no_option_the_cli_lacks():
    stale = documented_option_strings() - cli_option_strings()
    assert not stale, f"OPTIONS in man/zcsync.1 documents options zcsync does not have: {sorted(stale)}"


def test_every_exit_code_is_documented():
    lines = sections(MAN1)["EXIT STATUS"]
    documented = {int(t) for t in tags(lines) if t.strip().isdigit()}
    assert documented == {0, *cli.EXIT_TEXT}, "EXIT STATUS in man/zcsync.1 differs from zcsync.cli.EXIT_TEXT"


def test_every_environment_variable_the_code_reads_is_documented():
    read = set()
    for path in (ROOT / "zcsync").rglob("*.py"):
        read.update(re.findall(r"environb?(?:\.get\(|\[)\s*b?[\"'](ZCSYNC_[A-Z0-9_]+)", path.read_text("utf-8")))
    assert "ZCSYNC_RSH" in read  # the scan itself works
    documented = set(re.findall(r"ZCSYNC_[A-Z0-9_]+", "\n".join(tags(sections(MAN1)["ENVIRONMENT"]))))
    assert read <= documented, f"undocumented in ENVIRONMENT of man/zcsync.1: {sorted(read - documented)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_version_is_the_package_version(page):
    th = next(line for line in page.read_text("utf-8").splitlines() if line.startswith(".TH "))
    assert f'"zcsync {zcsync.__version__}"' in th, f"update the .TH line of {page.name} to {zcsync.__version__}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_groff_has_no_warnings(page):
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed (Debian package groff-base; scripts/test.sh installs it)")
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    proc = subprocess.run([groff, "-man", "-ww", "-z", str(page)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and not proc.stderr.strip(), f"groff -man -ww on {page.name}:\n{proc.stderr}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_man_renders_without_warnings(page):
    man = shutil.which("man")
    if man is None or shutil.which("groff") is None:
        pytest.skip("man or groff is not installed (Debian packages man-db, groff-base)")
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANWIDTH": "80"}
    proc = subprocess.run([man, "--warnings", "-l", str(page)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and not proc.stderr.strip(), f"man --warnings on {page.name}:\n{proc.stderr}"
    text = re.sub(r".\x08", "", proc.stdout)  # overstrike bold and underline
    assert "NAME" in text and "SEE ALSO" in text


def test_zcsyncd_conf_example_parses():
    """The EXAMPLE of zcsyncd.conf(5) is a configuration the daemon accepts."""
    daemon_config = pytest.importorskip("zcsync.daemon_config")
    example = sections(MAN5)["EXAMPLE"]
    start = example.index(".EX")
    text = "\n".join(plain(line) for line in example[start + 1:example.index(".EE", start)])
    config = daemon_config.parse_config(text, "zcsyncd.conf.5")
    assert set(config.modules) == {"www", "backup"}
    assert config.modules["backup"].secrets_file and not config.modules["backup"].read_only
