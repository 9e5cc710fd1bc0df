"""An encoder family: one tiny patch-embedding "backbone" (8 px patches, 16 features), random weights only.

The family record is light (no torch at import); ``_backend`` imports torch when a model is built.
"""

from __future__ import annotations

from types import SimpleNamespace

from ntt_batch.models.encoders import EncoderBackend, EncoderFamily
from ntt_batch.models.registry import CheckpointSpec

EMBED_DIM = 16
PATCH = 8


def _backend() -> EncoderBackend:
    import torch
    from torch import nn

    from ntt_batch.models.checkpoint_files import load_checkpoint_file

    class TinyPatchEncoder(nn.Module):
        """[B, 3, H, W] in [0, 1] → [B, H/8, W/8, 16]: a strided convolution over normalised pixels."""

        patch_size = PATCH
        native_image_size = 64
        embed_dim = EMBED_DIM

        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name
            self.proj = nn.Conv2d(3, EMBED_DIM, kernel_size=PATCH, stride=PATCH)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.proj(images * 2.0 - 1.0).permute(0, 2, 3, 1)

    def build(name, state_dict=None, *, depth=None):
        model = TinyPatchEncoder(name)
        if state_dict is not None:
            model.load_state_dict(state_dict, strict=True)
        return model.eval().requires_grad_(False)

    def random_state_dict(name, seed, *, depth=None):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return {k: v.clone() for k, v in TinyPatchEncoder(name).state_dict().items()}

    return EncoderBackend(
        models={"demo_tiny": SimpleNamespace(embed_dim=EMBED_DIM)},
        build=build,
        random_state_dict=random_state_dict,
        load_state_dict=load_checkpoint_file,
    )


DEMO = EncoderFamily(
    name="demo",
    patch_size=PATCH,
    native_image_size=64,
    checkpoints=(
        CheckpointSpec(
            name="demo_tiny",
            family="demo",
            filename="demo_tiny.pth",
            url=None,
            sha256=None,
            size_bytes=None,
            license="MIT (demo)",
            access="https://example.invalid/ntt-plugin-demo",
        ),
    ),
    implementation=_backend,
)
