"""Packaging: the wheel carries the man pages; Debian, RPM and systemd files are complete and parse."""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "packaging"
DEBIAN = PKG / "debian"
SYSTEMD = PKG / "systemd"
SPEC = PKG / "rpm" / "zcsync.spec"
UNITS = ["zcsyncd.service", "zcsync-backup@.service", "zcsync-backup@.timer"]
MAN_PAGES = {"share/man/man1": "man/zcsync.1", "share/man/man5": "man/zcsyncd.conf.5"}


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["version"]


def deb822(path: Path) -> list[dict[str, str]]:
    """Paragraphs of a Debian control-style file: {field: value}, continuation lines joined."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    field = None
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, field = {}, None
        elif line[0] in " \t":
            assert field is not None, f"{path.name}:{n}: continuation line without a field"
            current[field] += "\n" + line.strip()
        else:
            name, sep, value = line.partition(":")
            assert sep and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", name), f"{path.name}:{n}: not a field: {line!r}"
            assert name not in current, f"{path.name}:{n}: duplicate field {name}"
            field = name
            current[name] = value.strip()
    if current:
        paragraphs.append(current)
    return paragraphs


def relations(value: str) -> set[str]:
    """Package names in a Depends-style field (alternatives, versions and arch qualifiers dropped)."""
    names = set()
    for item in value.replace("\n", " ").split(","):
        for alt in item.split("|"):
            name = re.sub(r"\(.*?\)|\[.*?\]|<.*?>", "", alt).strip()
            if not name.startswith("${"):
                name = name.split(":")[0]  # python3:any
            if name:
                names.add(name)
    return names


def unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file as {section: [(key, value), ...]} (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    text = path.read_text("utf-8").replace("\\\n", " ")
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}:{n}: bad section header"
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, sep, value = line.partition("=")
        assert current and sep and key.strip(), f"{path.name}:{n}: not KEY=VALUE: {line!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def value(sections: dict[str, list[tuple[str, str]]], section: str, key: str) -> str | None:
    """The last value of key in section (systemd's rule for most settings)."""
    values = [v for k, v in sections.get(section, []) if k == key]
    return values[-1] if values else None


# -- the wheel ------------------------------------------------------------------------


def _copy_source(dst: Path) -> None:
    """The checkout without build products, so that the build neither races nor litters it."""
    junk = {".git", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis", ".pybuild", "results"}

    def ignore(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if n in junk or n.endswith((".egg-info", ".so", ".whl"))]

    shutil.copytree(ROOT, dst, ignore=ignore, symlinks=True)


def test_pyproject_installs_the_man_pages():
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]["data-files"]
    assert {k: v for k, v in data_files.items() if k.startswith("share/man")} == \
        {k: [v] for k, v in MAN_PAGES.items()}


def test_wheel_contains_the_man_pages(tmp_path):
    src, out = tmp_path / "src", tmp_path / "wheels"
    _copy_source(src)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}"
    (wheel,) = out.glob("zcsync-*.whl")
    data = f"zcsync-{project_version()}.data/data"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for target, source in MAN_PAGES.items():
            member = f"{data}/{target}/{Path(source).name}"
            assert member in names, f"{member} is not in {wheel.name}"
            assert zf.read(member) == (ROOT / source).read_bytes()
        entry_points = zf.read(f"zcsync-{project_version()}.dist-info/entry_points.txt").decode()
    assert re.search(r"^zcsync\s*=\s*zcsync\.cli:main$", entry_points, re.M)


# -- Debian -----------------------------------------------------------------------------


def test_debian_control():
    source, *binaries = deb822(DEBIAN / "control")
    assert source["Source"] == "zcsync"
    assert re.search(r"debhelper-compat \(= 1[3-9]\)", source["Build-Depends"])
    assert {"dh-python", "pybuild-plugin-pyproject", "python3-all-dev", "python3-setuptools"} <= \
        relations(source["Build-Depends"])
    (binary,) = binaries
    assert binary["Package"] == "zcsync" and binary["Architecture"] == "any"  # C extensions
    depends = relations(binary["Depends"])
    assert {"python3-click", "python3-xxhash", "python3-tqdm", "python3-paramiko",
            "${python3:Depends}", "${shlibs:Depends}", "${misc:Depends}"} <= depends
    assert binary["Description"].count("\n") >= 2  # a synopsis and a long description


def test_debian_changelog_matches_the_project_version():
    text = (DEBIAN / "changelog").read_text("utf-8")
    m = re.match(r"zcsync \(([^)]+)\) [a-zA-Z-]+; urgency=(low|medium|high|emergency|critical)\n", text)
    assert m, "first line of debian/changelog"
    assert m.group(1).rsplit("-", 1)[0] == project_version(), "debian/changelog is behind pyproject.toml"
    assert re.search(r"^ -- .+ <[^>]+>  \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}$", text, re.M)
    tool = shutil.which("dpkg-parsechangelog")
    if tool:
        out = subprocess.run([tool, "-l", str(DEBIAN / "changelog"), "-S", "Version"],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == m.group(1)


def test_debian_rules_and_install_lists():
    rules = DEBIAN / "rules"
    text = rules.read_text("utf-8")
    assert text.startswith("#!/usr/bin/make -f\n")
    assert rules.stat().st_mode & stat.S_IXUSR, "debian/rules must be executable"
    assert "--buildsystem=pybuild" in text and "--with python3" in text
    for name in re.search(r"^UNITS = (.*)$", text, re.M).group(1).split():
        assert (SYSTEMD / name).is_file(), name
    assert (DEBIAN / "source" / "format").read_text().strip() in ("3.0 (quilt)", "3.0 (native)")
    manpages = (DEBIAN / "zcsync.manpages").read_text().split()
    assert sorted(manpages) == sorted(MAN_PAGES.values())
    for listing in ("zcsync.install", "zcsync.docs", "zcsync.examples", "zcsync.manpages"):
        for line in (DEBIAN / listing).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                assert (ROOT / line.split()[0]).exists(), f"debian/{listing} names a missing file: {line}"


def test_debian_copyright_is_machine_readable():
    header, *paragraphs = deb822(DEBIAN / "copyright")
    assert header["Format"] == "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
    files = [p for p in paragraphs if "Files" in p]
    licenses = {p["License"].split("\n")[0] for p in paragraphs if "Files" not in p}
    assert files and files[0]["Files"] == "*"
    for p in files:
        assert p.get("Copyright") and p["License"] in licenses, p
        for pattern in p["Files"].split():
            assert pattern == "*" or list(ROOT.glob(pattern)), f"debian/copyright: no file matches {pattern}"


def test_debian_autopkgtest_declares_the_smoke_test():
    (paragraph,) = deb822(DEBIAN / "tests" / "control")
    assert paragraph["Tests"].split() == ["smoke"]
    assert "zcsync" in relations(paragraph["Depends"])
    smoke = DEBIAN / "tests" / "smoke"
    assert smoke.stat().st_mode & stat.S_IXUSR, "debian/tests/smoke must be executable"
    assert "diff -r" in smoke.read_text()
    subprocess.run(["sh", "-n", str(smoke)], check=True)


def test_smoke_test_passes_against_the_checkout(tmp_path):
    """The autopkgtest script itself, with `zcsync` being this checkout."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "zcsync"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m zcsync "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT), "AUTOPKGTEST_TMP": str(tmp_path)}
    proc = subprocess.run(["sh", str(DEBIAN / "tests" / "smoke")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, f"smoke test failed:\n{proc.stdout}\n{proc.stderr}"
    assert "smoke test: ok" in proc.stdout


# -- RPM --------------------------------------------------------------------------------


def spec_sections(text: str) -> dict[str, str]:
    """The spec's preamble ("") and each %section's body."""
    names = ("prep", "generate_buildrequires", "build", "install", "check", "files", "changelog",
             "description", "post", "preun", "postun")
    out: dict[str, str] = {"": ""}
    current = ""
    for line in text.splitlines():
        m = re.match(r"%(\w+)\b", line)
        if m and m.group(1) in names:
            current = m.group(1)
            out[current] = out.get(current, "") + line[m.end():] + "\n"
        else:
            out[current] = out.get(current, "") + line + "\n"
    return out


def test_rpm_spec_uses_the_pyproject_macros():
    text = SPEC.read_text("utf-8")
    parts = spec_sections(text)
    tags = dict(re.findall(r"^(\w+):\s*(.+)$", parts[""], re.M))
    assert tags["Name"] == "zcsync" and tags["Version"] == project_version()
    assert {"Release", "Summary", "License", "Source0"} <= tags.keys()
    assert "%pyproject_buildrequires" in parts["generate_buildrequires"]
    assert "%pyproject_wheel" in parts["build"]
    assert "%pyproject_install" in parts["install"]
    assert "%pyproject_save_files zcsync" in parts["install"]
    assert parts["files"].split("\n")[0].strip() == "-f %{pyproject_files}"
    for page in ("%{_mandir}/man1/zcsync.1*", "%{_mandir}/man5/zcsyncd.conf.5*"):
        assert page in parts["files"]
    for name in UNITS:
        assert f"%{{_unitdir}}/{name}" in parts["files"]
    for path in set(re.findall(r"\bpackaging/[\w./@-]+", text)):
        assert (ROOT / path).exists(), f"zcsync.spec names a missing file: {path}"
    assert re.search(r"^\* \w{3} \w{3} \d{1,2} \d{4} .+ <[^>]+> - " + re.escape(project_version()) + r"-\d+",
                     parts["changelog"], re.M)


def test_rpmspec_parses_the_spec():
    rpmspec = shutil.which("rpmspec")
    if rpmspec is None:
        pytest.skip("rpmspec is not installed (Debian package rpm)")
    proc = subprocess.run([rpmspec, "-P", str(SPEC)], capture_output=True, text=True)
    assert proc.returncode == 0 and "error" not in proc.stderr.lower(), proc.stderr


# -- systemd ----------------------------------------------------------------------------


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "ProtectHome": "read-only",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter": "@system-service",
}


def test_daemon_unit_is_hardened():
    u = unit(SYSTEMD / "zcsyncd.service")
    assert value(u, "Service", "ExecStart") == "/usr/bin/zcsync daemon --no-detach --config /etc/zcsyncd.conf"
    assert re.fullmatch(r"(/usr)?(/bin/)?kill -HUP \$MAINPID", value(u, "Service", "ExecReload") or "")
    for key, expected in HARDENING.items():
        assert value(u, "Service", key) == expected, key
    caps = set((value(u, "Service", "CapabilityBoundingSet") or "").split())
    assert caps and caps <= {"CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_READ_SEARCH"}
    assert "ReadWritePaths" in (SYSTEMD / "zcsyncd.service").read_text()  # documented for module paths
    assert value(u, "Install", "WantedBy") == "multi-user.target"


def test_backup_units():
    service = unit(SYSTEMD / "zcsync-backup@.service")
    assert value(service, "Service", "Type") == "oneshot"
    assert value(service, "Service", "EnvironmentFile") == "/etc/zcsync/backup-%i.conf"
    exec_start = value(service, "Service", "ExecStart") or ""
    assert exec_start.startswith("/usr/bin/zcsync ")
    assert all(re.search(r"\$\{?" + var + r"\b", exec_start) for var in ("OPTS", "SRC", "DST"))
    assert value(service, "Service", "NoNewPrivileges") == "yes"
    timer = unit(SYSTEMD / "zcsync-backup@.timer")
    assert value(timer, "Timer", "OnCalendar") and value(timer, "Timer", "Persistent") == "yes"
    assert value(timer, "Install", "WantedBy") == "timers.target"
    example = (SYSTEMD / "backup-example.conf").read_text()
    assert all(re.search(rf"^{var}=", example, re.M) for var in ("SRC", "DST", "OPTS"))


def _staged_units(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at a stub zcsync, and the man pages on a MANPATH."""
    stub = tmp_path / "bin" / "zcsync"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    for name in UNITS:
        (units / name).write_text((SYSTEMD / name).read_text().replace("/usr/bin/zcsync", str(stub)))
    for target, source in MAN_PAGES.items():
        (tmp_path / "man" / Path(target).name).mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / source, tmp_path / "man" / Path(target).name)
    return units


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    units = _staged_units(tmp_path)
    env = {**os.environ, "MANPATH": str(tmp_path / "man"), "SYSTEMD_LOG_LEVEL": "warning"}
    for group in (["zcsyncd.service"], ["zcsync-backup@.service", "zcsync-backup@.timer"],
                  ["zcsync-backup@home.service", "zcsync-backup@home.timer"]):
        proc = subprocess.run([tool, "verify", *group], capture_output=True, text=True, cwd=units, env=env)
        # Complaints about the host's own units are not ours; any line naming one of ours is.
        ours = [line for line in proc.stderr.splitlines() if "zcsync" in line]
        assert proc.returncode == 0 and not ours, f"systemd-analyze verify {' '.join(group)}:\n{proc.stderr}"


def test_systemd_analyze_security_of_the_daemon(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    units = _staged_units(tmp_path)
    proc = subprocess.run([tool, "security", "--offline=true", "--no-pager", "zcsyncd.service"],
                          capture_output=True, text=True, cwd=units)
    m = re.search(r"Overall exposure level for zcsyncd\.service: (\d+\.\d+)", proc.stdout + proc.stderr)
    if m is None:
        pytest.skip(f"systemd-analyze security --offline is not supported here: {proc.stderr.strip()[:200]}")
    assert float(m.group(1)) < 4.0, f"zcsyncd.service lost hardening:\n{proc.stdout}"


# -- shell completion -------------------------------------------------------------------


def _complete(words: str, cword: int, shell: str = "bash") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_ZCSYNC_COMPLETE": f"{shell}_complete",
           "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    return subprocess.run([sys.executable, "-m", "zcsync"], capture_output=True, text=True, env=env, cwd=ROOT)


def test_click_completion_works_for_zcsync():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_ZCSYNC_COMPLETE": "bash_source"}
    script = subprocess.run([sys.executable, "-m", "zcsync"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert script.returncode == 0
    assert "complete -o nosort -F _zcsync_completion zcsync" in script.stdout
    assert "plain,--delete-excluded" in _complete("zcsync -a --delete-e", 2).stdout.splitlines()
    assert _complete("zcsync --compress-choice ", 2).stdout.split() == ["plain,zstd", "plain,lz4", "plain,none"]


def test_packaged_bash_completion_file(tmp_path):
    completion = PKG / "completion" / "zcsync"
    assert "_ZCSYNC_COMPLETE=bash_source zcsync" in completion.read_text()
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    shim = tmp_path / "zcsync"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m zcsync "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [bash, "--norc", "-c", f'source "{completion}"; COMP_WORDS=(zcsync --ssh-acc); COMP_CWORD=1; '
         '_zcsync_completion zcsync; echo "${COMPREPLY[@]}"'],
        capture_output=True, text=True, env=env)
    assert proc.stdout.split() == ["--ssh-accept-new"], proc.stderr
