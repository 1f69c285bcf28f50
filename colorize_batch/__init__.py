"""colorize-batch: colorize folders of black-and-white photographs with a pix2pix U-Net."""

__version__ = "0.1.0"
