"""Input normalisation constants shared by the models (SAM 2, DINOv2 and DINOv3 all use ImageNet's)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, for inputs in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]
