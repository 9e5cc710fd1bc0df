"""One spelling per input: URIs are normalised before they become identities (issue 19).

An input's ``image_uri`` is its identity: the planner's duplicate check, resume ("has a row") and the
rows themselves use it. Two spellings of one file must therefore be one URI.

The rule (:func:`normalise_uri`):

* **local paths** (no protocol, or ``file://``): ``os.path.normpath`` of the path, so
  ``a/./x.jpg``, ``a//x.jpg`` and ``a/b/../x.jpg`` are all ``a/x.jpg`` (``file://`` kept when given;
  a relative path stays relative: it is resolved where the file is opened, as before). The
  normalisation is lexical (as the kernel treats ``.`` and ``//``); ``x/..`` where ``x`` is a
  symbolic link is the one case where it can name another file than the kernel would.
* **object stores** (``s3://``, ``gs://``, ``az://``, ``http(s)://``, ...): unchanged. Keys are
  literal strings there: ``a//x.jpg``, ``a/./x.jpg`` and ``a/x.jpg`` are three different objects
  (S3 stores each as written; s3fs passes the key through verbatim), so collapsing them could name
  an object that does not exist, or another one.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc

from ..storage.fs import is_local

# A local path that normpath would change: '.' or '..' segments, or '//' not after a protocol's ':'
_MAY_CHANGE = r"(^|/)\.\.?(/|$)|[^:/]//|/$"


def normalise_uri(uri: str) -> str:
    """The one spelling of ``uri`` (module docstring): local paths normalised, object-store URIs unchanged."""
    if not uri or not is_local(uri):
        return uri
    prefix = "file://" if uri.startswith("file://") else ""
    path = uri[len(prefix) :]
    return prefix + os.path.normpath(path)


def normalise_uri_array(uris: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """:func:`normalise_uri` over a string array; vectorised test first, Python only for batches that need it."""
    if not len(uris) or not pc.any(pc.match_substring_regex(uris, _MAY_CHANGE)).as_py():
        return uris
    return pa.array([normalise_uri(u) for u in uris.to_pylist()], type=pa.string())


__all__ = ["normalise_uri", "normalise_uri_array"]
