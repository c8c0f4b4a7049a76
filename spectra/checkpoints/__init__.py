"""Checkpoint reading: every file format as a lazy tensor source, and how a tensor becomes matrices.

Belongs here: opening safetensors/torch/HF folders (one tensor at a time, never running code), the
inventory of what was found, tensor -> matrix extraction, the built-in example checkpoint, and series of
checkpoints ordered by training step.
"""
