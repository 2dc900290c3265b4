"""After training: the fold ensemble for inference, Grad-CAM, MONAI bundle and model card."""
