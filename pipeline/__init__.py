"""graystem: fine-tune ImageNet CNNs on grayscale medical images with exact 1-channel stems."""

__version__ = "0.1.0"
