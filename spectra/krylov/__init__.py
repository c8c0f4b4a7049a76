"""Krylov algorithms written against one LinearOperator convention (:mod:`.linop`).

Belongs here: Lanczos (Ritz pairs, residuals, lockstep chains), stochastic Lanczos quadrature
(densities, traces), Hutchinson/Hutch++ and power iteration. Nothing here knows about models.
"""
