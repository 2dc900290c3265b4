"""Fine-tune an ImageNet CNN on grayscale X-ray / ultrasound images: python train.py --config chest_xray"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
