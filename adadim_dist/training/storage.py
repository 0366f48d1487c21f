"""Where a run's files live, local or not: one place to list, read, write and copy them.

``run.storage_path`` is a local (or NFS) directory or a URI that pyarrow resolves to a filesystem
(``s3://bucket/runs?endpoint_override=host:9000&scheme=http``, ``gs://...``), exactly as Ray Train resolves it
(``pyarrow.fs.FileSystem.from_uri``), so a :class:`Location` here names the very files Ray writes there. The
run files (``config.yaml``, ``mlflow_run.json``), the checkpoint listing, the completeness check and the resume
choice all go through it, so object storage behaves like a local directory. A location's :attr:`uri` is a plain
string that names it again in another process (a worker); ``str()`` of one is for messages: credentials masked,
the URI's query (endpoint options) left out.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs

from ..config import is_uri


class Location:
    """A file or directory on a pyarrow filesystem: ``fs``, the path on it, and a URI naming both (None for a
    location made from a filesystem object, such as a Ray checkpoint's, which only this process can use)."""

    __slots__ = ("fs", "path", "uri")

    def __init__(self, fs: pyarrow.fs.FileSystem, path: str, uri: str | None = None) -> None:
        self.fs, self.path, self.uri = fs, path.rstrip("/") or "/", uri

    @classmethod
    def of(cls, where: "Location | str | os.PathLike") -> "Location":
        """A local path (str or Path) or a URI; a Location is returned as it is."""
        if isinstance(where, Location):
            return where
        text = os.fspath(where)
        if is_uri(text):
            fs, path = pyarrow.fs.FileSystem.from_uri(text)
            return cls(fs, path, text)
        return cls(pyarrow.fs.LocalFileSystem(), text, text)

    @classmethod
    def of_checkpoint(cls, checkpoint) -> "Location":
        """Where a ``ray.train.Checkpoint`` is (on its own filesystem: nothing is downloaded)."""
        return cls(checkpoint.filesystem, checkpoint.path)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pyarrow.fs.LocalFileSystem)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def child(self, name: str) -> "Location":
        def joined(path: str) -> str:
            return f"{path.rstrip('/')}/{name}"

        return Location(self.fs, joined(self.path), _uri_with_path(self.uri, joined))

    __truediv__ = child

    @property
    def parent(self) -> "Location":
        return Location(self.fs, posixpath.dirname(self.path), _uri_with_path(self.uri, posixpath.dirname))

    def _type(self) -> pyarrow.fs.FileType:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pyarrow.fs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pyarrow.fs.FileType.File

    def is_dir(self) -> bool:
        return self._type() == pyarrow.fs.FileType.Directory

    def children(self, pattern: str = "*", directories_only: bool = False) -> list["Location"]:
        """The entries directly under this directory whose names match ``pattern`` (fnmatch), sorted by name;
        none when it does not exist."""
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.path, allow_not_found=True))
        names = sorted(posixpath.basename(info.path.rstrip("/")) for info in infos
                       if not directories_only or info.type == pyarrow.fs.FileType.Directory)
        return [self.child(name) for name in names if fnmatch.fnmatchcase(name, pattern)]

    def tree(self) -> set[str]:
        """Every file and directory under this directory, as paths relative to it (one listing, also on an
        object store, where each lookup would be a request)."""
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.path, allow_not_found=True, recursive=True))
        prefix = self.path.rstrip("/") + "/"
        return {info.path[len(prefix):].rstrip("/") for info in infos if info.path.startswith(prefix)}

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """The parent directories are made; an object store's put is atomic, a local file is written in place."""
        self.fs.create_dir(self.parent.path, recursive=True)
        with self.fs.open_output_stream(self.path) as stream:
            stream.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def delete(self) -> None:
        """Remove this file, or this directory if it is empty."""
        if self.is_dir():
            if not self.children():
                self.fs.delete_dir(self.path)
        else:
            self.fs.delete_file(self.path)

    def move_to(self, destination: "Location") -> None:
        """Rename a directory (local) or copy it and delete the original (object stores cannot rename one)."""
        if self.is_local or not self.is_dir():
            self.fs.move(self.path, destination.path)
            return
        pyarrow.fs.copy_files(self.path, destination.path, source_filesystem=self.fs,
                              destination_filesystem=destination.fs, use_threads=False)
        self.fs.delete_dir(self.path)

    @contextlib.contextmanager
    def local_copy(self):
        """A local directory holding this directory's files: itself when local, else a download into a temporary
        directory that is removed afterwards."""
        if self.is_local:
            yield Path(self.path)
            return
        with tempfile.TemporaryDirectory(prefix="adadim-checkpoint-") as directory:
            pyarrow.fs.copy_files(self.path, directory, source_filesystem=self.fs,
                                  destination_filesystem=pyarrow.fs.LocalFileSystem())
            yield Path(directory)

    def __fspath__(self) -> str:
        if not self.is_local:
            raise TypeError(f"{self} is not a local path")
        return self.path

    def __str__(self) -> str:
        """For messages: the path, or the URI without its query (endpoint options) and credentials masked."""
        from .tracking import mask_credentials

        if self.uri is None:
            return f"{self.fs.type_name}:{self.path}"
        return mask_credentials(urlunsplit(urlsplit(self.uri)._replace(query="")) if is_uri(self.uri) else self.uri)

    def __repr__(self) -> str:
        return f"Location({self})"

    def __eq__(self, other) -> bool:
        if isinstance(other, (str, os.PathLike)):
            other = Location.of(other)
        if not isinstance(other, Location):
            return NotImplemented
        return self.path == other.path and self.fs.type_name == other.fs.type_name

    def __hash__(self) -> int:
        return hash((self.fs.type_name, self.path))


def _uri_with_path(uri: str | None, change) -> str | None:
    """``uri`` with its path changed by ``change`` (query, user info and host kept); a local path changed."""
    if uri is None:
        return None
    if not is_uri(uri):
        return change(uri)
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=change(parts.path)))
