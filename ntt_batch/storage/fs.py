"""Object storage through fsspec: filesystems, byte reads, local-or-remote tests, storage options.

The one place for: turning a URI into (filesystem, path) (:func:`filesystem`), telling local
paths from remote ones (:func:`is_local`), building fsspec storage options from the command
line's flags and a job file's block (:func:`storage_options_from`) and checking them for s3://
(:func:`check_storage_options`). Errors about option values never quote the value of a
secret-looking key.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import fsspec


@dataclass(frozen=True)
class InputImage:
    """One input: its ``image_id`` and ``image_uri`` (the identity used for resume: one output row per URI)."""

    image_id: int
    image_uri: str


_LOCAL_PROTOCOLS = ("file", "local")


def is_local(target: str | fsspec.AbstractFileSystem) -> bool:
    """True for a local path / ``file://`` URI, or a local filesystem object; False for remote stores."""
    if isinstance(target, str):
        return fsspec.utils.get_protocol(target) in _LOCAL_PROTOCOLS
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(target, LocalFileSystem)


def absolute_uri(uri: str | None) -> str | None:
    """Local relative paths → absolute (Ray workers need not share the driver's cwd); URIs unchanged."""
    if uri is None or not is_local(uri):
        return uri
    import os

    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


def storage_options_for(uri: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """fsspec storage options for ``uri``: only remote protocols take them (local ignores them)."""
    return {} if is_local(uri) else dict(options or {})


def filesystem(uri: str, options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol) for a URI. ``options`` e.g. {"endpoint_url": ..., "anon": True}."""
    fs, path = fsspec.core.url_to_fs(uri, **storage_options_for(uri, options))
    return fs, path


def read_bytes(uri: str, options: dict[str, Any] | None = None) -> bytes:
    fs, path = filesystem(uri, options)
    with fs.open(path, "rb") as f:
        return f.read()


# ----------------------------------------------------------------------------- storage options


class StorageOptionsError(ValueError):
    """A storage option is malformed, unknown or of the wrong type (the message never shows a secret's value)."""


_SECRET_WORDS = ("secret", "token", "password", "key", "credential")


def is_secret_key(key: str) -> bool:
    """Whether an option name looks like a credential (``secret``, ``aws_session_token``, ...; not ``endpoint_url``)."""
    key = str(key).lower()
    return key != "endpoint_url" and any(s in key for s in _SECRET_WORDS)


def redact_options(options: dict | None) -> dict:
    """Storage options safe to log or record: the values of secret-looking keys replaced by ``***``,
    and the userinfo of any URL in the others (``http://user:pw@host`` → ``http://***@host``)."""
    out = {}
    for k, v in (options or {}).items():
        if isinstance(v, dict):
            out[k] = redact_options(v)
        elif is_secret_key(k):
            out[k] = "***"
        else:
            out[k] = redact_urls(v) if isinstance(v, str) else v
    return out


# scheme://userinfo@ : the userinfo runs up to the last '@' before the host's end (a password may hold '@').
_URL_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#'\"<>]*@")


def redact_urls(text: str) -> str:
    """``text`` with the credentials of every URL in it hidden: ``http://user:SECRET@host/x`` →
    ``http://***@host/x`` (for messages, logs and records)."""
    return _URL_USERINFO.sub(r"\1***@", text) if "@" in text else text


def yaml_scalar(text: str) -> Any:
    """A KEY=VALUE flag's value as YAML reads it (true, 3, 0.5, ...); text that is not valid YAML stays a string
    (never an error: its message would quote the value, which may be a secret)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def storage_options_from(flags: dict, base: dict | None = None) -> dict:
    """fsspec storage options from the object-store flags, on top of ``base`` (a job file's ``storage_options:``).

    ``flags`` holds the CLI values: ``endpoint_url`` (str), ``anon`` (bool), ``profile`` (str) and
    ``storage_option`` (``KEY=VALUE`` strings, values read as YAML scalars: ``anon=true`` is a
    boolean). Flags left at None/False/empty do not touch ``base``; a flag overrides the same key
    of ``base``, and ``KEY=VALUE`` items override both. An ``endpoint_url`` ends up in
    ``client_kwargs`` (where s3fs passes it to botocore). ``base`` is not modified.

    Raises:
        StorageOptionsError: an item without ``=`` or with an empty key (the item is not echoed:
            it may hold a credential).
    """
    opts = dict(base or {})
    if isinstance(opts.get("client_kwargs"), dict):
        opts["client_kwargs"] = dict(opts["client_kwargs"])
    if flags.get("endpoint_url"):
        opts["endpoint_url"] = flags["endpoint_url"]
    if flags.get("anon"):
        opts["anon"] = True
    if flags.get("profile"):
        opts["profile"] = flags["profile"]
    items: Iterable[str] = flags.get("storage_option") or ()
    for n, item in enumerate(items, 1):
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise StorageOptionsError(
                f"--storage-option #{n} is not KEY=VALUE (not shown: it may hold a credential); "
                "e.g. --storage-option region_name=eu-west-1"
            )
        opts[key] = yaml_scalar(value)
    if opts.get("endpoint_url"):
        opts.setdefault("client_kwargs", {})["endpoint_url"] = opts.pop("endpoint_url")
    return opts


def s3_option_names() -> set[str]:
    """Option names s3fs accepts: S3FileSystem's arguments, fsspec's cache options, aiobotocore's session arguments."""
    import s3fs

    names = {p for p in inspect.signature(s3fs.S3FileSystem.__init__).parameters if p not in ("self", "kwargs")}
    names |= {"use_listings_cache", "listings_expiry_time", "max_paths", "skip_instance_cache"}
    try:
        from aiobotocore.session import AioSession

        names |= {p for p in inspect.signature(AioSession.__init__).parameters if p != "self"}
    except ImportError:  # pragma: no cover
        pass
    return names


_S3_PROTOCOLS = ("s3", "s3a")


def check_storage_options(options: dict | None, uris: Iterable[str]) -> None:
    """Refuse storage option names the object store of ``uris`` does not know (a misspelling would be
    ignored or fail late), and values of the wrong type.

    Checked when one of ``uris`` is s3:// (s3fs); other protocols take free-form options (e.g.
    HTTP headers) and pass unchecked.

    Raises:
        StorageOptionsError: the message names the key (``storage_options.<key>``), never a secret's value.
    """
    if not options:
        return
    if not isinstance(options, dict):
        raise StorageOptionsError(f"storage_options: must be a mapping of fsspec options, got {type(options).__name__}")
    if {fsspec.utils.get_protocol(u) for u in uris} & set(_S3_PROTOCOLS):
        valid = s3_option_names()
        unknown = sorted(k for k in options if k not in valid)
        if unknown:
            raise StorageOptionsError(
                f"storage_options: unknown key(s) {', '.join(repr(f'storage_options.{k}') for k in unknown)} for s3:// "
                f"(s3fs); valid keys: {', '.join(sorted(valid))}"
            )
        check_s3_option_types(options)
        check_endpoint_credentials(options)


def check_endpoint_credentials(options: dict) -> None:
    """Refuse an s3 ``endpoint_url`` with credentials in it (``http://user:pw@host``): botocore's HTTP
    client cannot use them, and they would travel in every log line. The URL is not echoed."""
    client_kwargs = options.get("client_kwargs") if isinstance(options.get("client_kwargs"), dict) else {}
    for key, value in (
        ("endpoint_url", options.get("endpoint_url")),
        ("client_kwargs.endpoint_url", client_kwargs.get("endpoint_url")),
    ):
        if isinstance(value, str) and redact_urls(value) != value:
            raise StorageOptionsError(
                f"storage_options.{key}: credentials in the URL are not supported (URL not shown); give "
                "http(s)://host:port and the credentials as storage_options key/secret, a profile, or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            )


# Option types s3fs does not state in its signature (None defaults); the others follow their defaults.
_S3_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "endpoint_url": (str,),
    "key": (str,),
    "secret": (str,),
    "token": (str,),
    "username": (str,),
    "password": (str,),
    "profile": (str,),
    "client_kwargs": (dict,),
    "config_kwargs": (dict,),
    "s3_additional_kwargs": (dict,),
    "session_vars": (dict,),
    "default_block_size": (int,),
    "use_listings_cache": (bool,),
    "listings_expiry_time": (int, float),
    "max_paths": (int,),
    "skip_instance_cache": (bool,),
}
_S3_CLIENT_KWARG_TYPES: dict[str, tuple[type, ...]] = {
    "endpoint_url": (str,),
    "region_name": (str,),
    "aws_access_key_id": (str,),
    "aws_secret_access_key": (str,),
    "aws_session_token": (str,),
    "verify": (bool, str),
    "use_ssl": (bool,),
}
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}


def _option_type_error(key: str, value, types: tuple[type, ...]) -> StorageOptionsError:
    shown = "(value hidden)" if is_secret_key(key.rsplit(".", 1)[-1]) else repr(value)
    expected = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in types)
    hint = (
        "; quote it in YAML (or --storage-option KEY='VALUE')"
        if str in types and not isinstance(value, (dict, list))
        else ""
    )
    return StorageOptionsError(f"{key}: expected {expected}, got {shown} ({type(value).__name__}){hint}")


def _has_type(value, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types  # YAML true/false is not an int here
    return isinstance(value, types) or (float in types and isinstance(value, int))


def check_s3_option_types(options: dict) -> None:
    """Refuse s3fs options of the wrong type (``anon: "false"`` would mean anonymous: a non-empty string is true).

    Types come from ``S3FileSystem``'s defaults (a ``False`` default takes true/false) plus a table for the
    options whose default is None; values of secret-looking keys are never echoed.
    """
    import s3fs

    types = {
        n: (type(p.default),)
        for n, p in inspect.signature(s3fs.S3FileSystem.__init__).parameters.items()
        if p.default is not None and isinstance(p.default, (bool, int, float, str))
    }
    types.update(_S3_OPTION_TYPES)
    for key, value in options.items():
        expected = types.get(key)
        if expected and value is not None and not _has_type(value, expected):
            raise _option_type_error(f"storage_options.{key}", value, expected)
    for key, value in (options.get("client_kwargs") or {}).items():
        expected = _S3_CLIENT_KWARG_TYPES.get(key)
        if expected and value is not None and not _has_type(value, expected):
            raise _option_type_error(f"storage_options.client_kwargs.{key}", value, expected)
