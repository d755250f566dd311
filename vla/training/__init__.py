"""Training: typed run configs, the Lightning module and data module around `VLAModel`."""
