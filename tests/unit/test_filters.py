"""Filter rules: parsing, matching, per-directory merge files; real rsync is the oracle."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

from zcsync.errors import UsageError
from zcsync.filters import FilterError, FilterFileError, FilterRules

RSYNC = shutil.which("rsync")
needs_rsync = pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")


# -- helpers ------------------------------------------------------------------------

def make_tree(root: Path, paths: Iterable[str], contents: dict[str, str] | None = None) -> None:
    """Create files (and 'dir/' entries) under root; contents override the default text."""
    contents = contents or {}
    for p in list(paths) + list(contents):
        full = root / p
        if p.endswith("/"):
            full.mkdir(parents=True, exist_ok=True)
        else:
            full.parent.mkdir(parents=True, exist_ok=True)
            full.write_text(contents.get(p, "x"))


def rsync_listed(src: Path, args: list[str], cwd: Path | None = None) -> set[str]:
    """Names rsync would send from src/ (rsync -r --list-only)."""
    proc = subprocess.run([RSYNC, "-r", "--list-only", *args, f"{src}/"],
                          capture_output=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr.decode()
    names = {line.split(None, 4)[4] for line in proc.stdout.decode().splitlines()}
    names.discard(".")
    return names


def dir_reader(path: Path):
    def read(name: bytes) -> bytes | None:
        try:
            return (path / os.fsdecode(name)).read_bytes()
        except OSError:
            return None
    return read


def our_selection(src: Path, rules: FilterRules) -> set[str]:
    """Walk src as the sender does: top-down, not descending into excluded dirs."""
    out: set[str] = set()

    def walk(path: Path, rel: bytes, rules: FilterRules) -> None:
        if rules.has_rules:
            rules = rules.enter_dir(rel or b".", dir_reader(path))
        for name in sorted(os.listdir(path)):
            child = path / name
            crel = (rel + b"/" if rel else b"") + os.fsencode(name)
            is_dir = stat.S_ISDIR(child.lstat().st_mode)
            if rules.has_rules and rules.excluded(crel, is_dir, "sender"):
                continue
            out.add(os.fsdecode(crel))
            if is_dir:
                walk(child, crel, rules)

    walk(src, b"", rules)
    return out


def tree_names(root: Path) -> dict[str, bool]:
    """Every name under root -> is it a directory."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            full = Path(dirpath) / n
            out[str(full.relative_to(root))] = full.is_dir()
    return out


def predicted_dest(src: Path, dst: Path, rules: FilterRules) -> set[str]:
    """What `rsync -r --delete src/ dst/` leaves in dst, according to our rules."""
    sent = our_selection(src, rules)
    dest = tree_names(dst)
    final = set(sent)

    def children(rel: str) -> list[str]:
        return [p for p in dest if os.path.dirname(p) == rel]

    def keep(rel: str) -> None:
        final.add(rel)
        final.update(p for p in dest if p.startswith(rel + "/"))

    def delete(rel: str) -> bool:
        # Protected names inside a directory being deleted survive (and so does it);
        # perishable rules do not protect there.
        survived = False
        if dest[rel]:
            for c in children(rel):
                if rules.excluded(os.fsencode(c), dest[c], "receiver", ignore_perishable=True):
                    keep(c)
                    survived = True
                elif delete(c):
                    survived = True
        if survived:
            final.add(rel)
        return survived

    def walk(rel: str) -> None:
        for c in children(rel):
            if c in sent:
                if dest[c]:
                    walk(c)
            elif rules.excluded(os.fsencode(c), dest[c], "receiver"):
                keep(c)
            else:
                delete(c)

    walk("")
    return final


def ex(specs: list[str], name: str, is_dir: bool = False, side: str = "sender", **kw) -> bool:
    return FilterRules.parse(specs, **kw).excluded(name.encode(), is_dir, side)


# -- parsing ------------------------------------------------------------------------

def test_no_rules() -> None:
    rules = FilterRules.parse([])
    assert not rules.has_rules
    assert rules.enter_dir(b".", lambda n: b"- x") is rules
    assert not rules.excluded(b"anything", False)


def test_has_rules_and_debug_listing() -> None:
    rules = FilterRules.parse(["- *.o", "+r keep", "H /tmp/", "exclude,s junk", "protect p"])
    assert rules.has_rules
    assert rules.rules("sender") == ["- *.o", "-s /tmp/", "-s junk"]
    assert rules.rules("receiver") == ["- *.o", "+r keep", "-r p"]


@pytest.mark.parametrize("spec,name,is_dir,excluded", [
    ("- foo", "foo", False, True),
    ("-_foo", "foo", False, True),
    ("exclude foo", "foo", False, True),
    ("exclude_foo", "foo", False, True),
    ("exclude,! foo", "bar", False, True),
    ("-,! foo", "bar", False, True),
    ("include foo", "foo", False, False),
    ("hide foo", "foo", False, True),
    ("show foo", "foo", False, False),
    ("- foo ", "foo", False, False),       # trailing space is part of the pattern
    ("- foo ", "foo ", False, True),
    ("-  foo", " foo", False, True),       # so is a second leading space
])
def test_rule_syntax(spec: str, name: str, is_dir: bool, excluded: bool) -> None:
    assert ex([spec], name, is_dir) is excluded


@pytest.mark.parametrize("spec,message", [
    ("x foo", "Unknown filter rule: 'x foo'"),
    ("c foo", "Unknown filter rule"),
    ("excludefoo", "Unknown filter rule"),
    ("-z foo", "Invalid modifier 'z' at position 1 in filter rule: '-z foo'"),
    ("-e foo", "Invalid modifier 'e'"),
    ("-n foo", "Invalid modifier 'n'"),
    ("Hs foo", "Invalid modifier 's'"),
    ("Pr foo", "Invalid modifier 'r'"),
    (":! .f", "Invalid modifier '!'"),
    (":-+ .f", "Invalid modifier '+'"),
    ("! foo", "'!' rule has trailing characters"),
    ("clear foo", "'!' rule has trailing characters"),
    ("- ", "Unexpected end of filter rule"),
    ("+", "Unexpected end of filter rule"),
    ("exclude", "Unexpected end of filter rule"),
])
def test_bad_rules(spec: str, message: str) -> None:
    with pytest.raises(FilterError) as info:
        FilterRules.parse([spec])
    assert message in str(info.value)
    assert isinstance(info.value, UsageError)
    assert info.value.exit_code == 1


def test_clear() -> None:
    assert not ex(["- a", "!", "- b"], "a")
    assert ex(["- a", "!", "- b"], "b")
    assert not ex(["- a", "clear"], "a")
    assert not FilterRules.parse(["- a", "!"]).has_rules


def test_sides() -> None:
    for spec, sender, receiver in [
        ("- f", True, True), ("-s f", True, False), ("-r f", False, True),
        ("-sr f", True, True), ("H f", True, False), ("P f", False, True),
        ("hide f", True, False), ("protect f", False, True),
    ]:
        assert ex([spec], "f", side="sender") is sender, spec
        assert ex([spec], "f", side="receiver") is receiver, spec
    # show/risk only override their own side
    assert not ex(["S f", "- f"], "f", side="sender")
    assert ex(["S f", "- f"], "f", side="receiver")
    assert ex(["R f", "- f"], "f", side="sender")
    assert not ex(["R f", "- f"], "f", side="receiver")


def test_delete_excluded_makes_plain_rules_sender_only() -> None:
    rules = FilterRules.parse(["- a", "P b", "-r c", "+ d", "- *"], delete_excluded=True)
    assert rules.excluded(b"a", False, "sender")
    assert not rules.excluded(b"a", False, "receiver")
    assert rules.excluded(b"b", False, "receiver")
    assert rules.excluded(b"c", False, "receiver")
    assert not rules.excluded(b"zzz", False, "receiver")


def test_perishable() -> None:
    rules = FilterRules.parse(["-p *.o", "- *.a"])
    assert rules.excluded(b"x.o", False, "receiver")
    assert not rules.excluded(b"x.o", False, "receiver", ignore_perishable=True)
    assert rules.excluded(b"x.a", False, "receiver", ignore_perishable=True)


def test_xattr_rules_never_match_names() -> None:
    rules = FilterRules.parse(["-x user.*"])
    assert not rules.has_rules


def test_bad_side_name() -> None:
    with pytest.raises(ValueError):
        FilterRules.parse(["- a"]).excluded(b"a", False, "both")


def test_old_style() -> None:
    assert FilterRules.old_style("*.o", "-") == "- *.o"
    assert FilterRules.old_style("*.c", "+") == "+ *.c"
    assert FilterRules.old_style("+ keep", "-") == "+ keep"
    assert FilterRules.old_style("- drop", "+") == "- drop"
    assert FilterRules.old_style("!", "-") == "!"
    assert FilterRules.old_style("!x", "-") == "- !x"


def test_rules_from_file(tmp_path: Path) -> None:
    f = tmp_path / "list"
    f.write_bytes(b"# comment\n; comment\n\n*.o\r\n+ keep\nsp ace \n- drop\n!\n")
    assert FilterRules.rules_from_file(f, "-") == [
        "- *.o", "+ keep", "- sp ace ", "- drop", "!"]
    assert FilterRules.rules_from_file(str(f), "+")[0] == "+ *.o"
    assert FilterRules.rules_from_file(f, None) == ["*.o", "+ keep", "sp ace ", "- drop", "!"]
    z = tmp_path / "zlist"
    z.write_bytes(b"a b\0#c\0\0d\ne\0")
    assert FilterRules.rules_from_file(z, "-", from0=True) == ["- a b", "- d\ne"]
    raw = tmp_path / "raw"
    raw.write_bytes(b"caf\xe9\n")
    (rule,) = FilterRules.rules_from_file(raw, "-")
    assert FilterRules.parse([rule]).excluded(b"caf\xe9", False)


def test_missing_file_is_a_file_io_error(tmp_path: Path) -> None:
    with pytest.raises(FilterFileError) as info:
        FilterRules.rules_from_file(tmp_path / "nope", "-")
    assert info.value.exit_code == 11
    assert "nope" in str(info.value)
    with pytest.raises(FilterFileError):
        FilterRules.parse([f"merge {tmp_path / 'nope'}"])


def test_merge_file(tmp_path: Path) -> None:
    (tmp_path / "m").write_text("- *.o\n+ keep.o\n. " + str(tmp_path / "m2") + "\n")
    (tmp_path / "m2").write_text("- *.c\n")
    (tmp_path / "ex").write_text("*.h\n+ x\n")
    rules = FilterRules.parse([f"merge {tmp_path / 'm'}", f"merge,- {tmp_path / 'ex'}"])
    assert rules.excluded(b"a.o", False) and rules.excluded(b"keep.o", False)
    assert rules.excluded(b"a.c", False) and rules.excluded(b"a.h", False)
    assert rules.excluded(b"+ x", False)        # no prefixes: the line is the pattern
    rules = FilterRules.parse([f".e {tmp_path / 'm2'}"])
    assert rules.excluded(b"m2", False)


def test_merge_file_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "m").write_text("- ok\nbogus rule\n")
    with pytest.raises(FilterError, match=r"Unknown filter rule.*rule 2 of .*m'"):
        FilterRules.parse([f"merge {tmp_path / 'm'}"])


def test_merge_loop_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "m").write_text(f"merge {tmp_path / 'm'}\n")
    with pytest.raises(FilterError, match="nested"):
        FilterRules.parse([f"merge {tmp_path / 'm'}"])


def test_untrusted_rules_cannot_read_files(tmp_path: Path) -> None:
    (tmp_path / "m").write_text("- x\n")
    with pytest.raises(FilterError, match="not allowed"):
        FilterRules.parse([f"merge {tmp_path / 'm'}"], trusted=False)


# -- matching -------------------------------------------------------------------------

@pytest.mark.parametrize("pattern,name,is_dir,match", [
    # final component only
    ("foo", "foo", False, True), ("foo", "a/b/foo", False, True), ("foo", "foo/x", False, False),
    ("*.c", "a/b.c", False, True), ("*.c", "b.c/x", False, False),
    # trailing slash: directories only
    ("foo/", "foo", True, True), ("foo/", "foo", False, False), ("foo/", "a/foo", True, True),
    # anchoring
    ("/foo", "foo", False, True), ("/foo", "a/foo", False, False), ("/a/foo", "a/foo", False, True),
    # unanchored with a slash matches trailing components on a boundary
    ("sub/foo", "a/sub/foo", False, True), ("sub/foo", "a/xsub/foo", False, False),
    ("sub/foo", "sub/foo", False, True), ("sub/*", "a/sub/x", False, True), ("sub/*", "sub/x/y", False, False),
    ("foo/*/bar", "foo/x/bar", False, True), ("foo/*/bar", "foo/x/y/bar", False, False),
    # ** crosses slashes
    ("/foo/**/bar", "foo/x/bar", False, True), ("/foo/**/bar", "foo/bar", False, False),
    ("**/foo", "foo", False, True), ("**/foo", "a/b/foo", False, True),
    ("a/**", "x/a/b/c", False, True), ("a/**", "a", True, False),
    ("**", "a/b", False, True), ("sub**", "x/sub/y", False, True), ("sub**", "xsub/y", False, False),
    # dir/*** = the directory and everything in it
    ("dir/***", "dir", True, True), ("dir/***", "dir", False, False), ("dir/***", "x/dir/a/b", False, True),
    ("/dir/***", "x/dir", True, False),
    # ? and classes never match '/'
    ("a?c", "abc", False, True), ("a?c", "a/c", False, False), ("a[/]c", "a/c", False, False),
    ("a[!x]c", "a/c", False, False), ("[/U]", "x/U", False, False),
    ("q[0-9]", "q5", False, True), ("q[!0-9]", "q5", False, False), ("q[^0-9]", "qa", False, True),
    ("[]x]", "]", False, True), ("[!]]*", "]a", False, False), ("[a-]", "-", False, True),
    ("*[[:digit:]]", "v2", False, True), ("[[:upper:]]*", "abc", False, False),
    ("[[:bogus:]]*", "abc", False, False), ("q[12", "q[12", False, False),
    # escapes only count when the pattern has wildcards
    ("lit\\[x]", "lit[x]", False, True), ("a\\b", "a\\b", False, True), ("a\\b*", "ab", False, True),
    ("a\\\\b*", "a\\b", False, True), ("*\\", "x\\", False, False),
    # wildcards still look at the final component only when there is no slash or **
    ("*", "a/b", False, True), ("*/", "a/b", True, True),
])
def test_pattern(pattern: str, name: str, is_dir: bool, match: bool) -> None:
    assert ex([f"- {pattern}"], name, is_dir) is match
    assert ex([f"-! {pattern}"], name, is_dir) is not match


def test_first_match_wins() -> None:
    specs = ["+ */", "+ *.c", "- *"]
    assert not ex(specs, "src", True)
    assert not ex(specs, "src/a.c")
    assert ex(specs, "src/a.h")
    assert ex(["- *.c", "+ a.c"], "a.c")


def test_negated_rules() -> None:
    assert ex(["-! */"], "file")
    assert not ex(["-! */"], "dir", True)
    assert ex(["+! *.c", "- *"], "a.h") is False
    assert ex(["+! *.c", "- *"], "a.c") is True
    assert ex(["-! q[12"], "q[12")                 # a pattern that never matches, negated


def test_root_is_never_excluded() -> None:
    assert not ex(["- *", "- ."], ".", True)


def test_absolute_modifier(tmp_path: Path) -> None:
    root = tmp_path / "src"
    rules = FilterRules.parse([f"-/ {root}/a/b", "-/ x", "-/ src/y"], root=root)
    assert rules.excluded(b"a/b", False)
    assert not rules.excluded(b"c/a/b", False)
    assert rules.excluded(b"deep/x", False)
    assert rules.excluded(b"y", False)               # matches ".../src/y" on a boundary


def test_bytes_names() -> None:
    rules = FilterRules.parse([b"- caf\xe9*", b"- *\xff/"])
    assert rules.excluded(b"d/caf\xe9.txt", False)
    assert rules.excluded(b"\xfe\xff", True)
    assert not rules.excluded(b"\xfe\xff", False)
    assert FilterRules.parse(["- a?b"]).excluded(b"a\nb", False)
    assert FilterRules.parse(["- a**"]).excluded(b"a\n/b", False)


def test_many_rules_are_grouped() -> None:
    specs = [f"- *.e{i}" for i in range(50)] + ["+ keep.e1"] + [f"- d{i}/" for i in range(50)]
    rules = FilterRules.parse(specs)
    assert rules.excluded(b"x/y.e49", False)
    assert rules.excluded(b"keep.e1", False)         # the earlier exclude wins
    assert rules.excluded(b"d7", True) and not rules.excluded(b"d7", False)
    assert not rules.excluded(b"keep.e", False)


# -- per-directory merge files ------------------------------------------------------------

def reader_for(files: dict[bytes, bytes], dirrel: bytes):
    def read(name: bytes) -> bytes | None:
        return files.get(name if dirrel == b"." else dirrel + b"/" + name)
    return read


def enter(rules: FilterRules, files: dict[bytes, bytes], *dirs: bytes) -> FilterRules:
    for d in (b".",) + dirs:
        rules = rules.enter_dir(d, reader_for(files, d))
    return rules


def test_dir_merge_inheritance() -> None:
    files = {
        b".f": b"- *.o\n",
        b"a/.f": b"- /top\n- *.c\n",
        b"a/b/.f": b"+ x.c\n",
    }
    base = FilterRules.parse([": .f"])
    assert base.has_rules and base.has_dir_merge
    root = enter(base, files)
    assert root.excluded(b"x.o", False) and not root.excluded(b"x.c", False)
    a = enter(base, files, b"a")
    assert a.excluded(b"a/x.c", False) and a.excluded(b"a/top", False)
    assert not a.excluded(b"a/sub/top", False)    # anchored to the merge file's directory
    ab = enter(base, files, b"a", b"a/b")
    assert not ab.excluded(b"a/b/x.c", False)     # newer rules come first
    assert ab.excluded(b"a/b/y.c", False) and ab.excluded(b"a/b/y.o", False)


def test_dir_merge_without_files_returns_self() -> None:
    root = enter(FilterRules.parse([": .f"]), {b".f": b"- x\n"})
    assert root.enter_dir(b"sub", lambda n: None) is root


def test_dir_merge_no_inherit_and_clear() -> None:
    files = {b".f": b"- a\n", b"d/.f": b"- b\n", b".g": b"- c\n", b"d/.g": b"!\n- e\n"}
    rules = enter(FilterRules.parse([":n .f", ": .g"]), files, b"d")
    assert not rules.excluded(b"d/a", False)
    assert rules.excluded(b"d/b", False)
    assert not rules.excluded(b"d/c", False)
    assert rules.excluded(b"d/e", False)
    deeper = rules.enter_dir(b"d/x", lambda n: None)
    assert not deeper.excluded(b"d/x/b", False)   # 'n': not inherited
    assert deeper.excluded(b"d/x/e", False)


def test_dir_merge_position_in_list() -> None:
    files = {b".f": b"+ a.c\n"}
    assert not enter(FilterRules.parse([": .f", "- *.c"]), files).excluded(b"a.c", False)
    assert enter(FilterRules.parse(["- *.c", ": .f"]), files).excluded(b"a.c", False)


def test_dir_merge_modifiers() -> None:
    files = {b".x": b"a b\n"}
    rules = enter(FilterRules.parse([":e- .x"]), files)
    assert rules.excluded(b".x", False) and rules.excluded(b"a b", False)
    rules = enter(FilterRules.parse([":w- .x"]), files)
    assert rules.excluded(b"a", False) and rules.excluded(b"b", False)
    rules = enter(FilterRules.parse([":s .y"]), {b".y": b"- q\n"})
    assert rules.excluded(b"q", False, "sender") and not rules.excluded(b"q", False, "receiver")
    with pytest.raises(FilterError, match="specified-side"):
        enter(FilterRules.parse([":s .y"]), {b".y": b"P q\n"})


def test_dir_merge_error_names_the_file() -> None:
    with pytest.raises(FilterError, match=r"rule 2 of 'd/\.f'"):
        enter(FilterRules.parse([": .f"]), {b"d/.f": b"- ok\n?? bad\n"}, b"d")


def test_dir_merge_named_twice_is_read_once() -> None:
    rules = enter(FilterRules.parse([": .f", ": /.f"]), {b".f": b"- x\n"})
    assert rules.rules() == ["- x"]


def test_nested_dir_merge() -> None:
    files = {b".f": b": .g\n", b".g": b"- top\n", b"d/.g": b"- inner\n"}
    rules = enter(FilterRules.parse([": .f"]), files)
    assert rules.excluded(b"top", False)
    d = rules.enter_dir(b"d", reader_for(files, b"d"))
    assert d.excluded(b"d/inner", False) and d.excluded(b"d/top", False)


def test_cvs_exclude() -> None:
    rules = FilterRules.parse(["-C"])
    assert rules.excluded(b"a/x.o", False) and rules.excluded(b".git", True)
    assert not rules.excluded(b".git", False)
    assert not rules.excluded(b"x.o", False, "receiver", ignore_perishable=True)
    rules = enter(FilterRules.parse([":C"]), {b".cvsignore": b"foo bar\n"})
    assert rules.excluded(b"foo", False) and rules.excluded(b"bar", False)


# -- differential tests against rsync ----------------------------------------------------------

SENDER_TREE = [
    "a.c", "b.h", "x.o", "foo", "foodir/foo/", "sub/foo", "sub/bar/foo", "sub/bar/baz.c", "sub/x.o",
    "deep/a/b/c/d.txt", "deep/a/b/c.o", "top/in.c", "d1/sub/foo/z", "lit[x]", "litx", "q1", "q22",
    "dir/f", "dir/g/h", "other/dir/f", "sp ace", "a\\b", "TAGS", "core", "x~", ".git/config",
    "empty/", "v2", "Up",
]

SENDER_CASES = [
    ["- *.o"], ["- foo"], ["- foo/"], ["- /foo"], ["- sub/foo"], ["- bar/*"], ["- sub/*/foo"],
    ["- /sub/**/foo"], ["- **/foo"], ["- sub/**"], ["- **"], ["- ***"], ["- dir/***"],
    ["+ dir/***", "- *"], ["- q?"], ["- q[0-9]"], ["- q[!1]*"], ["- lit[x]"], ["- lit\\[x]"],
    ["- lit[[]x]"], ["- *[[:digit:]]"], ["- [[:upper:]]*"], ["- a\\b"], ["- a\\\\b*"],
    ["+ */", "+ *.c", "- *"], ["+ sub/", "+ sub/bar/", "+ sub/bar/baz.c", "- *"], ["-! */"],
    ["+! *.c", "- *"], ["- *", "+ a.c"], ["exclude *.o", "include foo", "exclude foo*"],
    ["- sp ace"], ["- deep/a/b/"], ["- b/c"], ["- /deep/a"], ["- d/"], ["H *.c"], ["P *.c"],
    ["-s *.c"], ["-r *.c"], ["- *.o", "!", "- *.c"], ["clear"], ["- [/q]1"], ["- d*p/a*"],
    ["- **/b/**"], ["- a/**/c*"], ["+ top/***", "- *"], ["- [ab].*"], ["- [^a]*"], ["- *.[ch]"],
    ["-C"], ["- foo/***"], ["- *b/*"], ["- /sub/bar/"], ["- sub/bar/"], ["- ba?/"], ["- ***/foo"],
    ["- sub**"], ["- **foo"], ["- **/"], ["- */"], ["- [[:bogus:]]*"], ["- q[12"], ["- *\\"],
    ["- [a-]*"], ["- []x]"], ["- [!]]*"], ["+ foo/", "+ foo/bar.c", "- *"], ["-p *.o"],
    ["include sub/", "exclude sub/*", "include /sub/x.o"], ["+ /deep/", "+ /deep/a/", "- /deep/*/"],
    ["- /sub[!x]bar/foo"], ["- **[!x]bar/foo"], ["- /sub?bar/*"], ["- sub[[:punct:]]bar"],
]


@needs_rsync
@pytest.mark.parametrize("specs", SENDER_CASES, ids=lambda s: " | ".join(s))
def test_sender_matches_rsync(tmp_path: Path, specs: list[str]) -> None:
    src = tmp_path / "src"
    make_tree(src, SENDER_TREE)
    expected = rsync_listed(src, [f"--filter={s}" for s in specs])
    assert our_selection(src, FilterRules.parse(specs, root=src)) == expected


MERGE_TREE = [
    "a.c", "b.o", "keep.txt", "sub/a.c", "sub/b.o", "sub/keep.txt", "sub/deep/a.c", "sub/deep/b.o",
    "sub/deep/x.txt", "sub/deep/deeper/a.c", "other/a.c", "other/b.o", "other/z/y.c", "n/a.c",
    "n/inner/a.c",
]
MERGE_FILES = {
    ".rsync-filter": "- *.o\n# comment\n; another\n\n- /keep.txt\n",
    "sub/.rsync-filter": "- *.c\n+ keep.txt\n- /deep/x.txt\n",
    "sub/deep/.rsync-filter": "!\n- x.txt\n",
    "other/.rsync-filter": "+ a.c\n- a*\n",
    ".excl": "a.c\n",
    "n/.excl": "a.c\n",
    "sub/.excl": "b.o\n",
    ".words": "a.c  b.o\tkeep.txt\n",
    "sub/.more": "- deeper/\n",
    "sub/.rsync-filter2": ": .more\n- keep.txt\n",
    ".cvsignore": "a.c\n",
    "sub/.cvsignore": "keep.txt !\n",
    "other/.crlf": "- b.o\r\n- y.c\r\n",
}
MERGE_CASES = [
    [": .rsync-filter"], [":e .rsync-filter"], [":n- .excl"], [":- .excl"], [":+ .excl", "- *.c"],
    ["dir-merge .rsync-filter", "- *.txt"], ["- *.txt", ": .rsync-filter"], [":w- .words"],
    [": /.rsync-filter"], [": /.rsync-filter", "- .rsync-filter"], [":s .rsync-filter"],
    [":r .rsync-filter"], [": .rsync-filter2"], [": .rsync-filter", ": .rsync-filter"], [":C"],
    [": .rsync-filter", "!", "- *.c"], [": .rsync-filter", ":- .excl"], [":-p .excl"],
    ["dir-merge,n .rsync-filter"], [": .crlf"], ["dir-merge,e- .excl", "+ *.c", "- *"],
]


@needs_rsync
@pytest.mark.parametrize("specs", MERGE_CASES, ids=lambda s: " | ".join(s))
def test_dir_merge_matches_rsync(tmp_path: Path, specs: list[str]) -> None:
    src = tmp_path / "src"
    make_tree(src, MERGE_TREE, MERGE_FILES)
    expected = rsync_listed(src, [f"--filter={s}" for s in specs])
    assert our_selection(src, FilterRules.parse(specs, root=src)) == expected


@needs_rsync
@pytest.mark.parametrize("flags", [["-F"], ["-F", "-F"]])
def test_dash_f_matches_rsync(tmp_path: Path, flags: list[str]) -> None:
    src = tmp_path / "src"
    make_tree(src, MERGE_TREE, MERGE_FILES)
    specs = [": /.rsync-filter"] + (["- .rsync-filter"] if len(flags) == 2 else [])
    expected = rsync_listed(src, flags)
    assert our_selection(src, FilterRules.parse(specs, root=src)) == expected


@needs_rsync
@pytest.mark.parametrize("specs", [
    ["-F"], [": /.rsync-filter"], [": ../.rsync-filter"], [": ../../.rsync-filter"],
    [":n /.rsync-filter"], ["-/ q/src/**/keep"], ["-/ src/a.c"], ["-/ a.c"],
], ids=lambda s: " | ".join(s))
def test_parent_dir_scan_matches_rsync(tmp_path: Path, specs: list[str]) -> None:
    # Per-directory files above the transfer root count too (rsync's parent-dir scan);
    # their anchored rules are anchored at their own directory.
    files = {
        "p/q/src/sub/.rsync-filter": "- /x*\n- y/z\n- **/w\n+ /keep\n- keep\n",
        "p/q/src/.rsync-filter": "- /sub/y/\n",
        "p/.rsync-filter": "- /q/src/a.c\n- b.o\n- /src/c.txt\n",
        "p/q/.rsync-filter": "- /src/c.txt\n+ q.txt\n",
    }
    tree = ["a.c", "b.o", "c.txt", "q.txt", "keep", "sub/x1", "sub/xx/a", "sub/y/z", "sub/q/y/z",
            "sub/w", "sub/m/w", "sub/keep", "sub/q/keep", "sub/q/x1", "e/a.c", "e/c.txt"]
    make_tree(tmp_path, [f"p/q/src/{t}" for t in tree], files)
    src = tmp_path / "p" / "q" / "src"
    args = specs if specs == ["-F"] else [f"--filter={s}" for s in specs]
    ours = [": /.rsync-filter"] if specs == ["-F"] else specs
    expected = rsync_listed(src, args)
    assert our_selection(src, FilterRules.parse(ours, root=src)) == expected


@needs_rsync
def test_absolute_modifier_matches_rsync(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, ["a/b", "c/a/b", "x", "d/x"])
    specs = [f"-/ {src}/a/b", f"-/ {str(src)[1:]}/d/x"]
    expected = rsync_listed(src, [f"--filter={s}" for s in specs])
    assert our_selection(src, FilterRules.parse(specs, root=src)) == expected


@needs_rsync
def test_merge_and_from_files_match_rsync(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, ["a.c", "b.o", "c.txt", "keep", "d/a.c", "d/keep", "d/e.h"])
    make_tree(tmp_path, [], {
        "rules": "- *.o\n. rules2\n+ keep\n- d/\n",
        "rules2": "- a.c\n",
        "excl": "# hi\n*.o\n+ a.c\n- c.txt\n\n",
        "incl": "*.c\n*/\n- *\n",
        "zero": "*.o\0a.c\0",
    })
    cases: list[tuple[list[str], list[str], bool]] = [
        (["--filter=. rules"], [". rules"], False),
        (["--filter=merge,- excl"], ["merge,- excl"], False),
        (["--filter=.e rules2"], [".e rules2"], False),
        (["--filter=merge,+ incl", "--filter=- *"], ["merge,+ incl", "- *"], False),
        (["--exclude-from=excl"], FilterRules.rules_from_file(tmp_path / "excl", "-"), False),
        (["--include-from=incl", "--exclude=*"],
         FilterRules.rules_from_file(tmp_path / "incl", "+") + ["- *"], False),
        (["--exclude=+ a.c", "--exclude=*.c"],
         [FilterRules.old_style(p, "-") for p in ["+ a.c", "*.c"]], False),
        (["--exclude=*.c", "--exclude=!", "--exclude=*.o"],
         [FilterRules.old_style(p, "-") for p in ["*.c", "!", "*.o"]], False),
        (["--from0", "--exclude-from=zero"],
         FilterRules.rules_from_file(tmp_path / "zero", "-", from0=True), True),
        (["--from0", "--filter=merge,- zero"], ["merge,- zero"], True),
    ]
    cwd = os.getcwd()
    os.chdir(tmp_path)  # merge file names are relative to the working directory
    try:
        for args, specs, from0 in cases:
            expected = rsync_listed(src, args, cwd=tmp_path)
            got = our_selection(src, FilterRules.parse(specs, root=src, from0=from0))
            assert got == expected, args
    finally:
        os.chdir(cwd)


@needs_rsync
def test_bad_rules_are_rejected_by_rsync_too(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, ["a"])
    for spec in ["x foo", "-z foo", "! foo", "- ", ":! .f", "excludefoo"]:
        proc = subprocess.run([RSYNC, "-r", "--list-only", f"--filter={spec}", f"{src}/"],
                              capture_output=True)
        assert proc.returncode == 1, spec
        with pytest.raises(FilterError):
            FilterRules.parse([spec])


RECEIVER_SRC = ["a.c", "b.o", "sub/a.c", "sub/b.o", "sub/keep/x", "shared/s.c"]
RECEIVER_DST = ["a.c", "old.o", "old.c", "sub/old.o", "sub/old.c", "gone/x.o", "gone/y.c",
                "gone/deep/z.o", "keepme/f", "cache/c.tmp", "x.tmp", "shared/old.o", "shared/t.tmp"]
RECEIVER_CASES = [
    (["- *.o"], False), (["- *.o"], True), (["P *.o"], False), (["P *.o"], True),
    (["H *.o"], False), (["-s *.o"], False), (["-r *.o"], False), (["R old.o", "- *.o"], False),
    (["+r old.o", "- *.o"], True), (["- *.o", "P keepme/"], True), (["P /keepme"], False),
    (["- keepme/"], False), (["P **.o"], False), (["-p *.o"], False), (["Pp *.o"], False),
    (["P *.tmp", "H *.c"], False), (["- *.tmp", "+ *.c", "- *"], False),
    (["- *.tmp", "+ *.c", "- *"], True), (["-rs *.o"], True), (["- gone/"], False),
    (["P gone/***"], False), (["-! */"], False), (["Pp gone/"], False), (["+ */", "- *"], False),
    (["protect /sub/old.c", "risk *.c", "protect *"], False), (["S *.o", "- *.o"], False),
]


@needs_rsync
@pytest.mark.parametrize("specs,delete_excluded", RECEIVER_CASES,
                         ids=lambda v: " | ".join(v) if isinstance(v, list) else f"de={v}")
def test_receiver_protection_matches_rsync(tmp_path: Path, specs: list[str],
                                           delete_excluded: bool) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    make_tree(src, RECEIVER_SRC)
    make_tree(dst, RECEIVER_DST)
    rules = FilterRules.parse(specs, delete_excluded=delete_excluded)
    predicted = predicted_dest(src, dst, rules)
    args = [RSYNC, "-r", "--delete", *(["--delete-excluded"] if delete_excluded else []),
            *[f"--filter={s}" for s in specs], f"{src}/", f"{dst}/"]
    subprocess.run(args, capture_output=True)  # "cannot delete non-empty directory" is a 23
    assert set(tree_names(dst)) == predicted
