"""Editing: DiffusionRig's transfers of pose, expression and light, emotion targets, batch
editing with a trained diffusion model."""
