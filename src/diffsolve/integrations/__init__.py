"""Integrations with the ecosystem: diffusers (scheduler adapter, UNet wrapper) and
k-diffusion / ComfyUI (``sample_<name>`` functions)."""
