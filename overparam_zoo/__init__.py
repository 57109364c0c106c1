"""The timm/torchvision plugin for over-parameterized models (work in progress)."""
