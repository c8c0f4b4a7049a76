"""Curvature operators: matrix-free Hessian/GGN products over a model, a loss and data.

Belongs here: the operators themselves (HVP modes, counters), block views and block-diagonal
operators, the guards that make a model twice differentiable and restore it, losses, the Hessian
probe that runs the Krylov algorithms over a model and its blocks, and sharpness tracking inside a
training loop (tracker, edge-of-stability thresholds, the HF Trainer callback).
"""
