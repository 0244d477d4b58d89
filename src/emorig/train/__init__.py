"""Training: data preparation and the loops for reconstruction and diffusion stages."""
