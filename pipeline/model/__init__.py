"""Building models: timm backbones with converted 1-channel stems, their weights, checkpoints and output heads."""
