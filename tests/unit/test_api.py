"""The library API: zcsync.sync(src, dst, **long_options) -> SyncResult, quiet and thread-safe."""
from __future__ import annotations

import logging
import os
import pathlib
import re
import threading
import typing

import pytest

import zcsync
from zcsync import api
from zcsync.errors import PARTIAL


def _tree(root: pathlib.Path, names: dict[str, bytes]) -> pathlib.Path:
    for name, data in names.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


SAMPLE = {"a.txt": b"alpha", "b.bin": b"\0" * 1000, "sub/c.txt": b"gamma", "sub/deep/d.tmp": b"tmp"}


def test_success_counts_and_events(tmp_path, capfd):
    src = _tree(tmp_path / "src", SAMPLE)
    result = zcsync.sync(f"{src}/", str(tmp_path / "dst"), archive=True)
    assert result.ok and result.exit_code == 0 and result.errors == ()
    assert _files(tmp_path / "dst") == SAMPLE
    s = result.stats
    assert s.files_transferred == 4 and s.files_deleted == 0
    assert s.literal_bytes == sum(map(len, SAMPLE.values())) == s.total_size
    assert s.matched_bytes == 0 and s.bytes_received == 0 and s.bytes_sent >= s.literal_bytes
    assert s.elapsed_s > 0
    assert {e.name for e in result.events if e.itemize.startswith(">f")} == set(SAMPLE)
    assert all(e.itemize == ">f+++++++++" for e in result.events if e.name in SAMPLE)
    assert capfd.readouterr() == ("", "")  # a library prints nothing


def test_no_change_second_run(tmp_path):
    src = _tree(tmp_path / "src", SAMPLE)
    zcsync.sync(f"{src}/", str(tmp_path / "dst"), archive=True)
    again = zcsync.sync(f"{src}/", str(tmp_path / "dst"), archive=True, itemize_changes=True)
    assert again.ok and again.stats.files_transferred == 0 and again.stats.literal_bytes == 0
    assert [e for e in again.events if e.itemize] == []


def test_delete_exclude_and_paths(tmp_path):
    src = _tree(tmp_path / "src", SAMPLE)
    dst = _tree(tmp_path / "dst", {"old.txt": b"old", "keep.tmp": b"protected by the exclude"})
    result = zcsync.sync(f"{src}/", dst, archive=True, delete=True, exclude=["*.tmp"])
    assert result.ok
    assert _files(dst) == {"a.txt": b"alpha", "b.bin": SAMPLE["b.bin"], "sub/c.txt": b"gamma",
                           "keep.tmp": b"protected by the exclude"}
    assert result.stats.files_deleted == 1
    assert [e.name for e in result.events if e.itemize == "*deleting"] == ["old.txt"]


def test_path_objects_name_the_directory_itself(tmp_path):
    # A pathlib.Path has no trailing slash: like `zcsync -a src dst`, src goes inside dst.
    src = _tree(tmp_path / "src", SAMPLE)
    assert zcsync.sync([src], tmp_path / "dst", archive=True).ok
    assert set(_files(tmp_path / "dst")) == {f"src/{name}" for name in SAMPLE}


def test_filter_rules_apply_in_keyword_order(tmp_path):
    src = _tree(tmp_path / "src", SAMPLE)
    result = zcsync.sync(f"{src}/", str(tmp_path / "dst"), recursive=True, include=["*/", "*.txt"],
                         exclude="*")
    assert result.ok and _files(tmp_path / "dst") == {"a.txt": b"alpha", "sub/c.txt": b"gamma"}
    result = zcsync.sync(f"{src}/", str(tmp_path / "dst2"), recursive=True, filter=["- *.bin", "- *.tmp"])
    assert set(_files(tmp_path / "dst2")) == {"a.txt", "sub/c.txt"}


def test_dry_run_and_checksum(tmp_path):
    src = _tree(tmp_path / "src", SAMPLE)
    dry = zcsync.sync(f"{src}/", str(tmp_path / "dst"), archive=True, dry_run=True)
    assert dry.ok and not (tmp_path / "dst").exists() and dry.stats.files_transferred == 4
    zcsync.sync(f"{src}/", str(tmp_path / "dst"), archive=True)
    (tmp_path / "dst" / "a.txt").write_bytes(b"ALPHA")  # same size; restore the time
    st = (src / "a.txt").stat()
    os.utime(tmp_path / "dst" / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert zcsync.sync(f"{src}/", str(tmp_path / "dst"), archive=True).stats.files_transferred == 0
    fixed = zcsync.sync(f"{src}/", str(tmp_path / "dst"), archive=True, checksum=True)
    assert fixed.stats.files_transferred == 1 and (tmp_path / "dst" / "a.txt").read_bytes() == b"alpha"


@pytest.mark.parametrize("link_dest", ["../prev", ["../prev"]])
def test_link_dest_str_or_list(tmp_path, link_dest):
    src = _tree(tmp_path / "src", SAMPLE)
    zcsync.sync(f"{src}/", str(tmp_path / "prev"), archive=True)
    result = zcsync.sync(f"{src}/", str(tmp_path / "new"), archive=True, link_dest=link_dest)
    assert result.ok and result.stats.files_transferred == 0
    assert (tmp_path / "new" / "a.txt").stat().st_ino == (tmp_path / "prev" / "a.txt").stat().st_ino


def _dir_where_file_goes(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    src = _tree(tmp_path / "src", SAMPLE)
    dst = _tree(tmp_path / "dst", {"a.txt/keep": b"a directory where src has a file"})
    return src, dst


def test_per_file_error_is_reported_not_printed(tmp_path, capfd):
    src, dst = _dir_where_file_goes(tmp_path)
    result = zcsync.sync(f"{src}/", str(dst), archive=True)
    assert result.exit_code == PARTIAL == 23 and not result.ok
    assert result.errors, "the problem must be in the result"
    assert {e.path for e in result.errors} == {"a.txt"}
    assert all(e.code == 23 and "a.txt" in e.message for e in result.errors)
    assert _files(dst)["sub/c.txt"] == b"gamma"  # the rest was transferred
    assert capfd.readouterr() == ("", "")


def test_per_file_error_reaches_configured_logging(tmp_path, caplog):
    src, dst = _dir_where_file_goes(tmp_path)
    with caplog.at_level(logging.ERROR, logger="zcsync"):
        result = zcsync.sync(f"{src}/", str(dst), archive=True)
    assert result.exit_code == 23
    assert any("cannot delete non-empty directory" in r.getMessage() for r in caplog.records)


def test_unknown_or_invalid_option_raises_usage_error(tmp_path):
    with pytest.raises(zcsync.UsageError, match="did you mean dry_run"):
        zcsync.sync("a/", "b/", dryrun=True)  # type: ignore[call-arg]
    with pytest.raises(zcsync.UsageError) as info:
        zcsync.sync("a/", "b/", archive="yes")  # type: ignore[typeddict-item]
    assert info.value.exit_code == 1
    with pytest.raises(zcsync.UsageError):
        zcsync.sync("a/", "b/", max_size="lots")
    with pytest.raises(zcsync.UsageError, match="--delete-WHEN"):
        zcsync.sync("a/", "b/", delete_before=True, delete_after=True)
    with pytest.raises(zcsync.UsageError):
        zcsync.sync("a/", "b/", version=True)  # type: ignore[call-arg]
    assert isinstance(zcsync.UsageError("x"), zcsync.ZcsyncError)


def test_fatal_problem_raises_with_exit_code(tmp_path):
    src = _tree(tmp_path / "src", SAMPLE)
    with pytest.raises(zcsync.ZcsyncError) as info:
        zcsync.sync(f"{src}/", str(tmp_path / "missing" / "parent" / "dst"), archive=True)
    assert info.value.exit_code == 11 and isinstance(info.value, zcsync.FileIOError)


def test_missing_source_is_a_per_file_problem(tmp_path):
    result = zcsync.sync(str(tmp_path / "nope"), str(tmp_path / "dst"), archive=True)
    assert result.exit_code == 23 and "No such file or directory" in result.errors[0].message


def test_options_map_like_the_command_line():
    opts = api.parse_options({"archive": True, "perms": False, "verbose": 2, "itemize_changes": True,
                              "delete_after": True, "max_size": "1M", "link_dest": "../a",
                              "exclude": ["*.o"], "partial_dir": pathlib.Path(".p"), "info": "progress2"})
    assert opts.recursive and opts.times and opts.perms is False and opts.verbose == 2 and opts.itemize
    assert opts.delete and opts.delete_mode == "after" and opts.max_size == 1 << 20
    assert opts.link_dest == ("../a",) and opts.filter_rules == ("- *.o",) and opts.partial_dir == ".p"
    assert opts.progress == "total"
    assert api.option_args({"exclude": "-x", "fsync": False}) == ["--exclude=-x", "--no-fsync"]


def test_sync_options_typed_dict_lists_every_keyword():
    declared = set(typing.get_type_hints(api.SyncOptions))
    assert declared == set(api.keywords())


def test_result_as_dict_is_the_json_schema(tmp_path):
    src, dst = _dir_where_file_goes(tmp_path)
    doc = zcsync.sync(f"{src}/", str(dst), archive=True).as_dict()
    assert doc["exit_code"] == 23 and doc["ok"] is False
    assert doc["errors"] and set(doc["errors"][0]) == {"path", "message", "code"}
    for key in ("files_transferred", "files_deleted", "bytes_sent", "bytes_received", "literal_bytes",
                "matched_bytes", "total_size", "elapsed_s"):
        assert isinstance(doc["stats"][key], (int, float)), key


def test_log_file_from_the_library(tmp_path):
    src, dst = _dir_where_file_goes(tmp_path)
    log = tmp_path / "sync.log"
    result = zcsync.sync(f"{src}/", str(dst), archive=True, log_file=str(log))
    assert result.exit_code == 23
    lines = log.read_text().splitlines()
    stamp = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[\d+\] ")
    assert lines and all(stamp.match(line) for line in lines)
    texts = [stamp.sub("", line) for line in lines]
    assert ">f+++++++++ sub/c.txt" in texts
    assert any(t.startswith("zcsync: cannot delete non-empty directory") for t in texts)
    assert texts[-1] == "zcsync error: some files/attrs were not transferred (see previous errors) (code 23)"


def test_two_syncs_in_parallel_threads_stay_apart(tmp_path):
    trees = {
        "one": {f"one-{i}.txt": b"1" * (i + 1) for i in range(150)},
        "two": {f"two/{i}.dat": b"2" * (3 * i + 1) for i in range(90)},
    }
    results: dict[str, zcsync.SyncResult] = {}
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def run(key: str) -> None:
        try:
            src = _tree(tmp_path / f"src-{key}", trees[key])
            start.wait()
            results[key] = zcsync.sync(f"{src}/", str(tmp_path / f"dst-{key}"), archive=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
    threads = [threading.Thread(target=run, args=(k,)) for k in trees]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    for key, names in trees.items():
        result = results[key]
        assert result.ok and _files(tmp_path / f"dst-{key}") == names
        assert result.stats.files_transferred == len(names)
        assert result.stats.literal_bytes == sum(map(len, names.values()))
        assert {e.name for e in result.events if e.itemize.startswith(">f")} == set(names)
    assert results["one"].stats is not results["two"].stats


def test_public_names():
    for name in ("sync", "SyncResult", "ZcsyncError", "UsageError", "FileIOError", "ProtocolError",
                 "StartupError", "Interrupted", "FileProblem", "Stats"):
        assert name in zcsync.__all__ and hasattr(zcsync, name)
    for name in zcsync.__all__:
        obj = getattr(zcsync, name)
        if isinstance(obj, type) and issubclass(obj, zcsync.ZcsyncError):
            assert isinstance(obj.exit_code, int)


def test_transport_tcp_needs_a_remote_side(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(zcsync.UsageError, match="--transport=tcp needs a remote"):
        zcsync.sync(f"{tmp_path}/a/", str(tmp_path / "b"), transport="tcp")
    assert not (tmp_path / "b").exists()
