"""Pure, batched, differentiable torch functions for cryo-EM physics. No state, no classes.

Conventions (see docs/conventions.md): images are ``(..., L, L)`` with row = y, column = x and the
centre at ``(L//2, L//2)``; frequencies are in cycles/pixel on the FFT grid (Nyquist = 0.5).
"""
