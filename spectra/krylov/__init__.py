"""Krylov algorithms written against one LinearOperator convention (:mod:`.linop`).

Belongs here: Lanczos (Ritz pairs, residuals, lockstep chains), stochastic Lanczos quadrature
(densities, traces), Hutchinson/Hutch++, power iteration, and the exact spectrum of an operator small
enough to be done from its columns. Nothing here knows about models.
"""
