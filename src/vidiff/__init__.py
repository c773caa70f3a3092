"""vidiff: video diffusion that loads diffusers checkpoints and reproduces their frames."""

__version__ = "0.1.0"
