"""Storage backends, chosen by the library URL's scheme.

``file`` (a folder, the default) is served with system calls; ``memory``, ``az``/``abfs``,
``s3`` and ``http(s)`` are object stores behind ``RemoteStorage``, which adds retries under a
deadline, concurrent ranged reads and conditional reads. Credentials come from Settings and
are never part of ``Storage.uri``, log lines or error messages.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from backends import paths
from backends.blocking import BlockingRunner
from backends.errors import MediaNotFound
from backends.storage import azure, http, memory, s3
from backends.storage.base import Entry, Kind, ObjectInfo, ScatterRead, Storage, read_blocks
from backends.storage.local import LocalStorage
from backends.storage.remote import ObjectStore, RemoteOptions, RemoteStorage
from backends.storage.retry import RetryPolicy, deadline_scope
from conf.settings import StorageSettings

__all__ = [
    "Entry",
    "Kind",
    "LocalStorage",
    "ObjectInfo",
    "RemoteStorage",
    "ScatterRead",
    "Storage",
    "StorageURLError",
    "deadline_scope",
    "display_url",
    "open_storage",
    "read_blocks",
]

SCHEMES = ("file", "memory", "az", "abfs", "abfss", "s3", "s3a", "http", "https")


class StorageURLError(ValueError):
    """The library URL or its options cannot be used; the message says why (no secrets)."""


def display_url(library: str) -> str:
    """``library`` without user info or query string: safe to print and to key caches on."""
    if "://" not in library:
        return library
    parts = urlsplit(library)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if "@" in parts.netloc and parts.scheme in ("az", "abfs", "abfss"):
        host = parts.netloc  # container@account: names, not credentials
    return f"{parts.scheme}://{host}{parts.path}"


def _options(settings: StorageSettings) -> RemoteOptions:
    policy = RetryPolicy(
        attempts=settings.retries + 1,
        base_delay=settings.retry_base_delay,
        max_delay=settings.retry_max_delay,
        attempt_timeout=settings.attempt_timeout,
        deadline=settings.deadline,
        write_timeout=settings.write_timeout,
    )
    return RemoteOptions(
        policy=policy,
        read_concurrency=settings.read_concurrency,
        max_read_bytes=int(settings.max_read_mb * 2**20),
    )


Connect = Callable[[], Awaitable[ObjectStore]]


def _azure(library: str, settings: StorageSettings) -> Connect:
    parts = urlsplit(library)
    container, _, host = parts.netloc.partition("@")
    account = settings.azure_account_name or (host.split(".")[0] if host else "")
    if not container:
        raise StorageURLError(f"{display_url(library)}: name a container, az://container/prefix")
    options: dict[str, Any]
    if settings.azure_connection_string:
        options = {"connection_string": settings.azure_connection_string}
    elif not account:
        raise StorageURLError(
            "Azure storage needs storage.azure_account_name (or container@account in the URL) "
            "or storage.azure_connection_string"
        )
    elif settings.azure_account_key:
        options = {"account_name": account, "account_key": settings.azure_account_key}
    elif settings.azure_sas_token:
        options = {"account_name": account, "sas_token": settings.azure_sas_token}
    elif settings.azure_default_credential:
        options = {"account_name": account}
    else:
        options = {"account_name": account, "anon": True}
    root = f"{container}/{parts.path.strip('/')}"

    async def connect() -> ObjectStore:
        return await azure.AzureStore.connect(
            root,
            options,
            settings.azure_default_credential,
            settings.attempt_timeout,
            settings.write_timeout,
        )

    return connect


def _s3(library: str, settings: StorageSettings) -> Connect:
    parts = urlsplit(library)
    if not parts.netloc:
        raise StorageURLError(f"{display_url(library)}: name a bucket, s3://bucket/prefix")
    options: dict[str, Any] = {}
    if settings.s3_anonymous:
        options["anon"] = True
    if settings.s3_key or settings.s3_secret:
        options.update(key=settings.s3_key, secret=settings.s3_secret)
    if settings.s3_session_token:
        options["token"] = settings.s3_session_token
    if settings.s3_endpoint_url:
        options["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_region:
        options["client_kwargs"] = {"region_name": settings.s3_region}
    root = f"{parts.netloc}/{parts.path.strip('/')}"
    block = int(settings.write_block_mb * 2**20)

    async def connect() -> ObjectStore:
        return await s3.S3Store.connect(
            root, options, settings.attempt_timeout, block, settings.write_timeout
        )

    return connect


def open_storage(settings: StorageSettings, runner: BlockingRunner) -> Storage:
    """The storage ``settings.library`` names. Nothing is contacted until the first call."""
    library = settings.library
    scheme = urlsplit(library).scheme.lower() if "://" in library else "file"
    if scheme not in SCHEMES:
        raise StorageURLError(
            f"unsupported storage URL scheme {scheme!r} (supported: {', '.join(SCHEMES)})"
        )
    if scheme != "file" and urlsplit(library).query:
        raise StorageURLError(
            f"{display_url(library)}: no query string in the library URL; "
            "credentials belong in the storage.* settings"
        )
    if scheme == "file":
        folder = library[len("file://") :] if library.startswith("file://") else library
        root = os.path.realpath(os.path.expanduser(folder))
        if not os.path.isdir(root):
            raise MediaNotFound(f"library folder {folder} does not exist")
        return LocalStorage(root, runner)
    options = _options(settings)
    connect: Callable[[], Awaitable[ObjectStore]]
    if scheme == "memory":
        root = "/" + paths.clean(library[len("memory://") :].strip("/"))

        async def connect_memory() -> ObjectStore:
            return memory.MemoryStore(root)

        return RemoteStorage(f"memory://{root}", "memory", connect_memory, memory.classify, options)
    if scheme in ("az", "abfs", "abfss"):
        connect = _azure(library, settings)
        return RemoteStorage(display_url(library), "azure", connect, azure.classify, options)
    if scheme in ("s3", "s3a"):
        connect = _s3(library, settings)
        return RemoteStorage(display_url(library), "s3", connect, s3.classify, options)
    base = display_url(library).rstrip("/")
    timeout = settings.attempt_timeout

    async def connect_http() -> ObjectStore:
        return await http.HttpStore.connect(library.rstrip("/"), timeout)

    return RemoteStorage(base, "http", connect_http, http.classify, options)
