"""Checkpoint registry, lookup, download + sha256 verification, official layouts, safe loading."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch
from conftest import shared_data_dir

from ntt_batch.models import checkpoints as ck
from ntt_batch.models.registry import CHECKPOINTS, DEFAULT_ENCODER, DEFAULT_SAM2, CheckpointSpec, get_spec


def test_registry_names_urls_and_defaults():
    expected = {f"sam2_hiera_{s}" for s in ("tiny", "small", "base_plus", "large")}
    expected |= {f"sam2.1_hiera_{s}" for s in ("tiny", "small", "base_plus", "large")}
    expected |= {f"dinov2_vit{s}14{r}" for s in "sblg" for r in ("", "_reg4")}
    expected |= {"dinov3_vits16", "dinov3_vits16plus", "dinov3_vitb16", "dinov3_vitl16", "dinov3_vith16plus"}
    assert set(CHECKPOINTS) == expected
    assert (DEFAULT_SAM2, DEFAULT_ENCODER) == ("sam2_hiera_large", "dinov2_vitl14")  # the paper's (method.md §6)
    assert (
        get_spec("sam2_hiera_large").url
        == "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_large.pt"
    )
    assert (
        get_spec("sam2.1_hiera_tiny").url
        == "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt"
    )
    assert (
        get_spec("dinov2_vitg14_reg4").url
        == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitg14/dinov2_vitg14_reg4_pretrain.pth"
    )
    published = [s for s in CHECKPOINTS.values() if s.family != "dinov3"]
    for spec in published:
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0 and spec.license == "Apache-2.0"
    assert len({s.sha256 for s in published}) == len(published)
    for spec in CHECKPOINTS.values():  # DINOv3: gated downloads, only an 8-hex-digit digest prefix published
        if spec.family == "dinov3":
            assert spec.url is None and spec.sha256 is None and len(spec.sha256_prefix) == 8
            assert spec.filename.endswith(f"-{spec.sha256_prefix}.pth") and "DINOv3 License" in spec.license
    with pytest.raises(ValueError, match="unknown dinov2 model 'sam2_hiera_large'"):
        get_spec("sam2_hiera_large", "dinov2")


def _fake_spec(monkeypatch, content: bytes, url: str = "http://127.0.0.1:9/none") -> CheckpointSpec:
    spec = CheckpointSpec(
        "fake_model", "dinov2", "fake_model.pth", url, hashlib.sha256(content).hexdigest(), len(content)
    )
    monkeypatch.setitem(CHECKPOINTS, "fake_model", spec)
    return spec


def test_preplaced_checkpoint_dir_and_env(tmp_path, monkeypatch):
    spec = _fake_spec(monkeypatch, b"weights")
    placed = tmp_path / "placed"
    placed.mkdir()
    (placed / spec.filename).write_bytes(b"weights")
    r = ck.resolve_checkpoint("fake_model", checkpoint_dir=placed, cache_dir=tmp_path / "cache", download=False)
    assert (Path(r.path), r.official, r.sha256) == (placed / spec.filename, True, spec.sha256)
    monkeypatch.setenv(ck.ENV_CHECKPOINT_DIR, str(placed))
    assert ck.resolve_checkpoint("fake_model", cache_dir=tmp_path / "cache", download=False).official


def test_non_official_file_is_flagged_loudly(tmp_path, monkeypatch, caplog):
    spec = _fake_spec(monkeypatch, b"weights")
    torch.save({"w": torch.zeros(1)}, tmp_path / spec.filename)  # a real checkpoint (a non-checkpoint is an error)
    other = (tmp_path / spec.filename).read_bytes()
    r = ck.resolve_checkpoint("fake_model", checkpoint_dir=tmp_path, cache_dir=tmp_path / "c", download=False)
    assert not r.official and r.sha256 == hashlib.sha256(other).hexdigest()
    assert "NOT OFFICIAL" in caplog.text


def test_missing_checkpoint_error_names_file_url_and_dirs(tmp_path, monkeypatch):
    spec = _fake_spec(monkeypatch, b"x")
    with pytest.raises(ck.CheckpointNotFoundError) as e:
        ck.resolve_checkpoint("fake_model", checkpoint_dir=tmp_path / "d", cache_dir=tmp_path / "c", download=False)
    msg = str(e.value)
    assert spec.filename in msg and spec.url in msg and str(tmp_path / "d") in msg and str(tmp_path / "c") in msg
    assert "ntt-batch checkpoints random" in msg


class _Handler(http.server.BaseHTTPRequestHandler):
    payload = b""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *a):
        pass


@pytest.fixture
def http_server():
    """A real HTTP server on loopback serving one payload (stands in for the download host)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_download_verifies_sha256_and_caches(tmp_path, monkeypatch, http_server):
    payload = b"0123456789" * 100_000
    _Handler.payload = payload
    url = f"http://127.0.0.1:{http_server.server_address[1]}/fake_model.pth"
    _fake_spec(monkeypatch, payload, url)
    r = ck.resolve_checkpoint("fake_model", cache_dir=tmp_path, download=True)
    assert r.official and Path(r.path).read_bytes() == payload
    assert not list(tmp_path.glob("*.part"))
    # the second call finds it in the cache (the server would now serve garbage)
    _Handler.payload = b"corrupted"
    assert ck.resolve_checkpoint("fake_model", cache_dir=tmp_path, download=True).official


def test_download_with_wrong_sha256_leaves_nothing(tmp_path, monkeypatch, http_server):
    _Handler.payload = b"tampered bytes"
    url = f"http://127.0.0.1:{http_server.server_address[1]}/fake_model.pth"
    spec = _fake_spec(monkeypatch, b"the real bytes", url)
    with pytest.raises(ck.ChecksumMismatchError, match="discarded"):
        ck.resolve_checkpoint("fake_model", cache_dir=tmp_path, download=True)
    assert list(tmp_path.iterdir()) == [] or not (tmp_path / spec.filename).exists()
    assert not list(tmp_path.glob("*.part"))


def test_sha256_sidecar_is_refreshed_when_file_changes(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"a")
    assert ck.cached_file_sha256(f) == hashlib.sha256(b"a").hexdigest()
    f.write_bytes(b"bb")
    assert ck.cached_file_sha256(f) == hashlib.sha256(b"bb").hexdigest()


def _official_layout(name: str) -> dict[str, list[int]]:
    tsv = shared_data_dir() / "sam2_checkpoint_layouts" / f"{name}.state_dict_keys.tsv"
    if not tsv.is_file():
        pytest.skip(f"{tsv} not available")
    out = {}
    for line in tsv.read_text().splitlines():
        key, shape, _ = line.split("\t")
        out[key] = [int(v) for v in shape.strip("[]").split(",") if v.strip()]
    return out


@pytest.mark.parametrize("name", ["sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus"])
def test_random_sam2_checkpoint_matches_official_layout(name):
    from ntt_batch.models.sam2_proposer import random_sam2_state_dict

    layout = _official_layout(name)
    sd = random_sam2_state_dict(name, seed=0)
    assert {k: list(v.shape) for k, v in sd.items()} == layout
    assert all(v.dtype == torch.float32 for v in sd.values())


def test_random_checkpoint_files_have_official_names_and_containers(random_checkpoints):
    from ntt_batch.models.dinov2 import official_key_shapes

    sam = torch.load(random_checkpoints / "sam2.1_hiera_tiny.pt", map_location="cpu", weights_only=True)
    assert list(sam) == ["model"] and len(sam["model"]) == len(_official_layout("sam2.1_hiera_tiny"))
    dino = torch.load(random_checkpoints / "dinov2_vits14_pretrain.pth", map_location="cpu", weights_only=True)
    assert {k: tuple(v.shape) for k, v in dino.items()} == official_key_shapes("dinov2_vits14")


def test_loading_refuses_pickled_objects(tmp_path):
    """weights_only=True: a checkpoint carrying arbitrary Python objects is rejected, not executed."""
    from ntt_batch.models.sam2_proposer import load_sam2_state_dict

    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil()}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_sam2_state_dict(str(path))


class _Evil:
    pass


def test_sam2_checkpoint_of_wrong_size_is_a_clear_error(random_checkpoints):
    from ntt_batch.models.sam2_proposer import build_sam2_proposer, load_sam2_state_dict

    sd = load_sam2_state_dict(str(random_checkpoints / "sam2.1_hiera_tiny.pt"))
    with pytest.raises(Exception, match="(?i)size|shape|missing|unexpected"):
        build_sam2_proposer("sam2.1_hiera_small", sd)


def test_gated_checkpoint_found_by_digest_prefix_or_explained(tmp_path, monkeypatch):
    """DINOv3: a pre-placed file whose sha256 starts with the published prefix is official; a missing
    one is not downloaded (gated) and the message says where to request access."""
    from ntt_batch.models.registry import DINOV3_ACCESS

    content = b"dinov3 weights"
    digest = hashlib.sha256(content).hexdigest()
    spec = CheckpointSpec(
        "fake_v3",
        "dinov3",
        f"fake_v3-{digest[:8]}.pth",
        None,
        None,
        None,
        sha256_prefix=digest[:8],
        license="DINOv3 License",
        access=DINOV3_ACCESS,  # where to request a gated model (the DINOv3 specs carry it)
    )
    monkeypatch.setitem(CHECKPOINTS, "fake_v3", spec)
    monkeypatch.setenv("NTT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ck.CheckpointNotFoundError, match="gated") as e:
        ck.resolve_checkpoint("fake_v3", checkpoint_dir=tmp_path / "none", download=True)
    assert DINOV3_ACCESS in str(e.value) and spec.filename in str(e.value)
    (tmp_path / spec.filename).write_bytes(content)
    got = ck.resolve_checkpoint("fake_v3", checkpoint_dir=tmp_path)
    assert got.official and got.sha256 == digest
