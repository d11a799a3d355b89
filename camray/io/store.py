"""Where an output lives, resolved once: its URI and S3 settings as a pyarrow filesystem and a root path on it.

Every path under the output is derived from the `Store` (`path`, `uri_of`); nothing below it resolves a URI into a
filesystem again. delta-rs reaches the same place through `delta_uri` and `storage_options`: the endpoint, region
and bounds of the job's S3 settings, credentials left to the AWS chain (the environment, a profile, an instance
role), as for pyarrow and boto3.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

from camray.io.sources import S3Settings, filesystem_for, is_s3, join_uri, s3_objects, write_object


@dataclass(frozen=True)
class StoredFile:
    """A file under the output: its path on the store's filesystem, size in bytes, modification time in ms."""

    path: str
    size: int
    modified_ms: int

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class Store:
    """The output's filesystem and root, resolved from `uri` and `s3` once."""

    def __init__(self, uri: str, s3: S3Settings) -> None:
        self.uri = uri.rstrip("/") or uri
        self.s3 = s3
        self.fs, self.root = filesystem_for(self.uri, s3)
        self.is_s3 = is_s3(self.uri)

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    def uri_of(self, *parts: str) -> str:
        return join_uri(self.uri, *parts)

    def path(self, *parts: str) -> str:
        """`parts` below the root, as a path on `fs`."""
        return "/".join([self.root, *(part.strip("/") for part in parts if part)])

    def relative(self, path: str) -> str:
        """A path on `fs` below the root -> the parts after it."""
        return path[len(self.root) :].lstrip("/")

    def delta_uri(self, *parts: str) -> str:
        """Where delta-rs finds `parts`: the `s3://` URI, or the absolute local path."""
        return self.uri_of(*parts) if self.is_s3 else self.path(*parts)

    def storage_options(self) -> dict[str, str]:
        """delta-rs's options for this store: the endpoint, region, attempts and timeouts of the S3 settings."""
        if not self.is_s3:
            return {}
        options = {
            "max_retries": str(self.s3.max_attempts - 1),
            "connect_timeout": f"{self.s3.connect_timeout:g}s",
            "timeout": f"{self.s3.read_timeout:g}s",
        }
        endpoint = self.s3.resolved_endpoint()
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            options["AWS_ENDPOINT_URL"] = f"{parsed.scheme}://{parsed.netloc}"
            if parsed.scheme == "http":
                options["AWS_ALLOW_HTTP"] = "true"
        region = self.s3.resolved_region()
        if region:
            options["AWS_REGION"] = region
        return options

    def info(self, *parts: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path(*parts))

    def is_folder(self, *parts: str) -> bool:
        """A folder (locally), or a prefix with objects under it (S3, which has no folders)."""
        if not self.is_s3:
            return self.info(*parts).type == pafs.FileType.Directory
        return bool(s3_objects(self.s3).list_keys(self.uri_of(*parts) + "/", limit=1))

    def files(self, folder: str, prefix: str = "") -> list[StoredFile]:
        """The files directly in `folder` (relative to the root) whose names start with `prefix`, in name order;
        hidden files (a temporary file of a write in progress) left out. On S3 one listing of that prefix, not of
        the folder: a run's files among a year of others cost a request or two."""
        found: list[StoredFile] = []
        if self.is_s3:
            base = self.path(folder)
            bucket = base.split("/", 1)[0]
            listed = s3_objects(self.s3).list_keys(self.uri_of(folder, prefix) if prefix else self.uri_of(folder) + "/")
            for key, size, modified in listed:
                name = f"{bucket}/{key}"[len(base) + 1 :]
                if "/" not in name and not name.startswith("."):
                    found.append(StoredFile(f"{base}/{name}", size, modified))
            return sorted(found, key=lambda item: item.path)
        folder_path = self.path(folder)
        try:
            entries = list(os.scandir(folder_path))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name.startswith(prefix) and not entry.name.startswith(".") and entry.is_file():
                stat = entry.stat()
                found.append(StoredFile(f"{folder_path}/{entry.name}", stat.st_size, stat.st_mtime_ns // 1_000_000))
        return sorted(found, key=lambda item: item.path)

    def write_bytes(self, data: bytes, *parts: str) -> int:
        """Writes the file whole (`write_object`); returns the S3 retries it took."""
        return write_object(self.uri_of(*parts), data, self.s3)

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode(), *parts)

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as stream:
            return stream.read()

    def delete_file(self, path: str) -> None:
        """A path on `fs`; one that is gone already is no error."""
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def delete_folder(self, *parts: str) -> None:
        """The folder and everything under it, if it is there."""
        path = self.path(*parts)
        if self.is_s3:
            # `delete_dir`, not `delete_dir_contents`: the latter keeps the folder's marker object, and a staging
            # folder left behind reads as an unfinished run to every later run.
            try:
                self.fs.delete_dir(path)
            except FileNotFoundError:
                pass
        elif self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self.fs.delete_dir(path)
