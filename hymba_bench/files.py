"""Every file the harness writes, and every input file it reads, goes through here.

Writing: a path is built with `inside(root, ...)`, which refuses one that leaves its output
directory (`..`, an absolute part) or passes through a symbolic link below it; files are opened
with `O_NOFOLLOW`, so a link planted where a file belongs is refused, never written through.
Whole files are written atomically (`write_atomic`: a temporary file beside the target, renamed
over it, removed on any failure), so a full disk leaves no `.tmp` behind and no torn file. An
`OSError` becomes a `FileError`: one line naming the file and the cause ("disk full").

Reading: `read_input` takes regular files only (a FIFO or a device would block forever) of at
most `MAX_INPUT_BYTES`, and is opened non-blocking so that the check itself cannot hang.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from hymba_bench.errors import HymbaBenchError

MAX_INPUT_BYTES = 1 << 20  # a design, profile, baseline or config file; ours are a few KB
# A design's name becomes folder names (checkpoints/<name>, lm_eval/<name>): one path component.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


class FileError(HymbaBenchError):
    """A file that cannot be written or read; the exit status says it is the machine's, not the
    input's (1)."""

    exit_code = 1


def check_name(name: object, where: str) -> str:
    """`name` if it can be a folder name of its own, else a one-line error naming `where`."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        raise HymbaBenchError(f"{where}: name: {shown} cannot be a folder name (up to 100 letters, "
                              "digits, '.', '_', '+' or '-', starting with a letter or digit; no "
                              "'/' or '..')")
    return name


def inside(root: Path, *parts: str | Path) -> Path:
    """`root / parts`, refused unless it stays under `root` with no symbolic link below it (`root`
    itself is the user's choice and may be one)."""
    root = Path(root)
    path = root
    for part in parts:
        for piece in Path(part).parts:
            if piece in ("", ".", "..") or os.path.isabs(piece) or "/" in piece or "\0" in piece:
                raise FileError(f"{root / Path(*parts)}: leaves the output directory {root}")
            path = path / piece
            if path.is_symlink():
                raise FileError(f"{path}: is a symbolic link; hymba-bench writes nothing through "
                                "a link (remove it, or choose another output directory)")
    return path


def reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    if exc.errno == errno.ELOOP:
        return "is a symbolic link; hymba-bench writes nothing through a link"
    if exc.errno == errno.EISDIR:
        return "is a directory"
    return exc.strerror or type(exc).__name__


def _refuse_special(fd: int, path: Path) -> None:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileError(f"{path}: not a regular file")


def make_dirs(path: Path, param: str | None = None) -> Path:
    """Create `path` (and parents): a one-line error when it cannot be, naming `param` (the
    parameter that chose it)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FileError(f"cannot write to {path}: {reason(exc)}", param=param) from None
    if not path.is_dir():
        raise FileError(f"{path}: not a directory", param=param)
    return path


def open_fd(path: Path, flags: int, mode: int = 0o644) -> int:
    """A descriptor of the regular file `path`, never through a link."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        raise FileError(f"{path}: cannot open: {reason(exc)}") from None
    _refuse_special(fd, path)
    os.set_blocking(fd, True)
    return fd


def append_fd(path: Path) -> int:
    return open_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def write_all(fd: int, data: bytes, path: Path) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        raise FileError(f"{path}: cannot write: {reason(exc)}") from None


@contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write by name (safetensors, torch.save), renamed over
    `path` when the block ends; removed, whatever happened, when it fails."""
    make_dirs(path.parent)
    if path.is_symlink():
        raise FileError(f"{path}: is a symbolic link; hymba-bench writes nothing through a link")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # unlink removes a planted link, never its target
    try:
        yield tmp
        if tmp.is_symlink() or not tmp.is_file():
            raise FileError(f"{tmp}: replaced by something other than a regular file")
        os.replace(tmp, path)
    except OSError as exc:
        raise FileError(f"{path}: cannot write: {reason(exc)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write the whole file `path`, or nothing of it."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic(path) as tmp:
        fd = open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            write_all(fd, payload, path)
        finally:
            os.close(fd)
    return path


def read_input(path: Path, what: str, limit: int = MAX_INPUT_BYTES) -> str:
    """The text of an input file: a regular file of at most `limit` bytes, UTF-8."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO opens at once
    except OSError as exc:
        raise HymbaBenchError(f"{path}: cannot read the {what}: {reason(exc)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise HymbaBenchError(f"{path}: the {what} is not a regular file")
        if info.st_size > limit:
            raise HymbaBenchError(f"{path}: the {what} has {info.st_size:,} bytes, more than the "
                                  f"{limit:,} such a file may have")
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise HymbaBenchError(f"{path}: the {what} is larger than {limit:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HymbaBenchError(f"{path}: the {what} is not UTF-8 text (byte {exc.start})") from None


MAX_YAML_NODES = 10_000  # values a design file may expand to, aliases followed; ours have < 200


def read_yaml(path: Path, what: str) -> object:
    """A YAML input file, strictly: the `read_input` limits, at most `MAX_YAML_NODES` values once
    aliases are expanded (an alias bomb is refused before it is built), no key given twice (YAML
    would keep the last silently) and no NaN or infinite numbers."""
    text = read_input(path, what)
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _bound_expansion(node, path, what)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        kind = "YAML" if isinstance(exc, ConstructorError) else "YAML syntax error"
        raise HymbaBenchError(f"{path}: {kind}{where}: {problem}") from None
    finally:
        loader.dispose()


def _bound_expansion(root: object, path: Path, what: str) -> None:
    sizes: dict[int, int] = {}
    stack: list[tuple[object, bool]] = [(root, False)]
    while stack:  # post-order, each distinct node once: a shared subtree is counted per use
        node, expanded = stack.pop()
        if id(node) in sizes:
            continue
        children: list[object] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if not expanded:
            stack.append((node, True))
            stack += [(c, False) for c in children if id(c) not in sizes]
            continue
        sizes[id(node)] = 1 + sum(sizes.get(id(c), 0) for c in children)
        if sizes[id(node)] > MAX_YAML_NODES:
            raise HymbaBenchError(f"{path}: the {what} expands to more than {MAX_YAML_NODES:,} "
                                  "values (YAML aliases); write it out, or make it smaller")


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise ConstructorError(None, None, f"{node.value!r} is not a finite number",
                                   node.start_mark)
        return value


_StrictLoader.add_constructor("tag:yaml.org,2002:float", _StrictLoader.construct_yaml_float)
