"""The official SAM 2 / SAM 2.1, DINOv2 and DINOv3 checkpoints, as data: the one place for the
built-in models' checkpoint facts (file names, addresses, digests, licences).

The model families that use them are entries of ``models.encoders.ENCODERS`` and
``models.proposers.PROPOSERS`` (a plug-in family brings its own :class:`CheckpointSpec` list);
``models.checkpoints.checkpoint_spec`` / ``all_checkpoints`` look names up across every family,
plug-ins included. :func:`get_spec` here knows the built-in table only.

Each entry names the file exactly as its publisher does, where to download it, and the SHA-256
of the official file. The SAM 2 and DINOv2 digests were collected from independent public projects
that verify these downloads (micro-sam, SlicerSegmentWithSAM, refiners) and agree with each other;
a file whose digest differs is not the official checkpoint (see ``checkpoints.resolve_checkpoint``).

DINOv3 (facebookresearch/dinov3, LVD-1689M web-image backbones) is different on two counts: its
downloads are gated (Meta's access form sends signed, expiring URLs, so there is no stable address
to download from: users place the file themselves, ``--checkpoint-dir``), and no full SHA-256 is
published, only the first 8 hex digits in the file name (torch-hub convention), which is what a
file is checked against (``sha256_prefix``). Its licence is the DINOv3 License, not Apache-2.0.
"""

from __future__ import annotations

from dataclasses import dataclass

SAM2_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2"
DINOV2_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"
APACHE_2 = "Apache-2.0"
DINOV3_LICENSE = "DINOv3 License (https://ai.meta.com/resources/models-and-libraries/dinov3-license/), not Apache-2.0"
DINOV3_ACCESS = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"

# The paper's models (method.md §6): SAM 2.0 Hiera-L + DINOv2 ViT-L/14.
DEFAULT_SAM2 = "sam2_hiera_large"
DEFAULT_ENCODER = "dinov2_vitl14"
# The smallest models (Apache-2.0, ungated): the CPU-sized demo, benchmarks and smoke runs.
SMALLEST_SAM2 = "sam2.1_hiera_tiny"
SMALLEST_ENCODER = "dinov2_vits14"


@dataclass(frozen=True)
class CheckpointSpec:
    """One official checkpoint.

    Attributes:
        name: the model name users pass (``sam2.1_hiera_tiny``, ``dinov2_vits14``).
        family: the model family, an ``ENCODERS`` or ``PROPOSERS`` name: ``"sam2"``, ``"dinov2"``,
            ``"dinov3"`` or a plug-in's.
        filename: the official file name; pre-placed files are looked up by it.
        url: official download address; None where downloads are gated (DINOv3).
        sha256: hex digest of the official file; None where it is not published.
        size_bytes: size of the official file (progress, sanity checks); None if not published.
        sam2_config: for SAM2, the config name inside the ``sam2`` package (hydra).
        license: the weights' licence.
        sha256_prefix: the leading hex digits of the official digest when only those are
            published (DINOv3: 8, in the file name).
        access: where to request access when downloads are gated (``url`` None), for messages.
    """

    name: str
    family: str
    filename: str
    url: str | None
    sha256: str | None
    size_bytes: int | None
    sam2_config: str | None = None
    license: str = APACHE_2
    sha256_prefix: str | None = None
    access: str | None = None

    def matches_official(self, digest: str) -> bool:
        """Whether a file with SHA-256 ``digest`` is the official file (by full digest, else by prefix)."""
        if self.sha256:
            return digest == self.sha256
        return bool(self.sha256_prefix) and digest.startswith(self.sha256_prefix)

    @property
    def official_digest(self) -> str:
        """The published digest, for messages: the full one, else ``<prefix>…``."""
        if self.sha256:
            return self.sha256
        return f"{self.sha256_prefix}… (only this prefix is published)" if self.sha256_prefix else "not published"


def _sam2(name: str, release: str, config: str, sha256: str, size: int) -> CheckpointSpec:
    filename = f"{name}.pt"
    return CheckpointSpec(
        name=name,
        family="sam2",
        filename=filename,
        url=f"{SAM2_BASE_URL}/{release}/{filename}",
        sha256=sha256,
        size_bytes=size,
        sam2_config=config,
    )


def _dinov2(name: str, sha256: str, size: int) -> CheckpointSpec:
    base = name.removesuffix("_reg4")
    filename = f"{name}_pretrain.pth"
    return CheckpointSpec(
        name=name,
        family="dinov2",
        filename=filename,
        url=f"{DINOV2_BASE_URL}/{base}/{filename}",
        sha256=sha256,
        size_bytes=size,
    )


def _dinov3(name: str, filename_stem: str, sha256_prefix: str) -> CheckpointSpec:
    return CheckpointSpec(
        name=name,
        family="dinov3",
        filename=f"{filename_stem}-{sha256_prefix}.pth",
        url=None,
        sha256=None,
        size_bytes=None,
        license=DINOV3_LICENSE,
        sha256_prefix=sha256_prefix,
        access=DINOV3_ACCESS,
    )


_SPECS = [
    # SAM 2.0, release 07/28/24 (the paper uses sam2_hiera_large).
    _sam2(
        "sam2_hiera_tiny",
        "072824",
        "configs/sam2/sam2_hiera_t.yaml",
        "65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125",
        155906050,
    ),
    _sam2(
        "sam2_hiera_small",
        "072824",
        "configs/sam2/sam2_hiera_s.yaml",
        "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3",
        184309650,
    ),
    _sam2(
        "sam2_hiera_base_plus",
        "072824",
        "configs/sam2/sam2_hiera_b+.yaml",
        "d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071",
        323493298,
    ),
    _sam2(
        "sam2_hiera_large",
        "072824",
        "configs/sam2/sam2_hiera_l.yaml",
        "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b",
        897952466,
    ),
    # SAM 2.1, release 09/28/24.
    _sam2(
        "sam2.1_hiera_tiny",
        "092824",
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
        156008466,
    ),
    _sam2(
        "sam2.1_hiera_small",
        "092824",
        "configs/sam2.1/sam2.1_hiera_s.yaml",
        "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
        184416285,
    ),
    _sam2(
        "sam2.1_hiera_base_plus",
        "092824",
        "configs/sam2.1/sam2.1_hiera_b+.yaml",
        "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
        323606802,
    ),
    _sam2(
        "sam2.1_hiera_large",
        "092824",
        "configs/sam2.1/sam2.1_hiera_l.yaml",
        "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
        898083611,
    ),
    # DINOv2 backbones (torch-hub names), with and without 4 register tokens.
    _dinov2("dinov2_vits14", "b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9", 88283115),
    _dinov2("dinov2_vitb14", "0b8b82f85de91b424aded121c7e1dcc2b7bc6d0adeea651bf73a13307fad8c73", 346378731),
    _dinov2("dinov2_vitl14", "d5383ea8f4877b2472eb973e0fd72d557c7da5d3611bd527ceeb1d7162cbf428", 1217586395),
    _dinov2("dinov2_vitg14", "baf8467e50af277596bbbafa06887c177ee899ab46033649c383577d7e9309d3", 4546108579),
    _dinov2("dinov2_vits14_reg4", "f433177089a681826f849f194ece3bb48f4d63fb38d32fc837e3dc7a4e5641fb", 88291785),
    _dinov2("dinov2_vitb14_reg4", "73182a088cf94833c94b1666d1c99e02fe87e2007bff57b564fb6206e25dba71", 346393545),
    _dinov2("dinov2_vitl14_reg4", "36e4deffbaef061a2576705b0c36f93621e2ae20bf6274694821b0b492551b51", 1217607321),
    _dinov2("dinov2_vitg14_reg4", "746ecb8c6301c645c5c855be91687d274587d6e48fdaec4a729753160b34a283", 4546140349),
    # DINOv3 ViTs at patch 16, distilled on LVD-1689M (facebookresearch/dinov3 hub names).
    _dinov3("dinov3_vits16", "dinov3_vits16_pretrain_lvd1689m", "08c60483"),
    _dinov3("dinov3_vits16plus", "dinov3_vits16plus_pretrain_lvd1689m", "4057cbaa"),
    _dinov3("dinov3_vitb16", "dinov3_vitb16_pretrain_lvd1689m", "73cec8be"),
    _dinov3("dinov3_vitl16", "dinov3_vitl16_pretrain_lvd1689m", "8aa4cbdd"),
    _dinov3("dinov3_vith16plus", "dinov3_vith16plus_pretrain_lvd1689m", "7c1da9a5"),
]

CHECKPOINTS: dict[str, CheckpointSpec] = {s.name: s for s in _SPECS}
SAM2_NAMES = [s.name for s in _SPECS if s.family == "sam2"]
DINOV2_NAMES = [s.name for s in _SPECS if s.family == "dinov2"]
DINOV3_NAMES = [s.name for s in _SPECS if s.family == "dinov3"]
ENCODER_NAMES = DINOV2_NAMES + DINOV3_NAMES  # the built-in encoders (every one: models.encoders.encoder_models)


def family_specs(family: str) -> tuple[CheckpointSpec, ...]:
    """The built-in checkpoints of ``family``, in table order."""
    return tuple(s for s in _SPECS if s.family == family)


def get_spec(name: str, family: str | None = None) -> CheckpointSpec:
    """Look up a built-in checkpoint by model name; unknown names list the valid ones.

    ``family``: ``"sam2"``, ``"dinov2"``, ``"dinov3"``, or ``"encoder"`` for any built-in image
    encoder. Plug-in models: ``models.checkpoints.checkpoint_spec``.
    """
    spec = CHECKPOINTS.get(name)
    if spec is None or (family is not None and not _in_family(spec, family)):
        valid = [n for n, s in CHECKPOINTS.items() if family is None or _in_family(s, family)]
        kind = f"{family} model" if family else "model"
        raise ValueError(f"unknown {kind} {name!r}; valid names: {', '.join(valid)}")
    return spec


def _in_family(spec: CheckpointSpec, family: str) -> bool:
    return spec.name in ENCODER_NAMES if family == "encoder" else spec.family == family
