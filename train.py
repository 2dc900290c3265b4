"""Fine-tune an ImageNet CNN on grayscale X-ray / ultrasound images: python train.py --config chest_xray"""

from pipeline.cli import main

if __name__ == "__main__":  # not again when a spawned worker imports this file
    raise SystemExit(main())
