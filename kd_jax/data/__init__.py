"""Data layer of kd_jax.

Submodules (import them explicitly; this package imports nothing heavy):

* ``codec``: PyAV MPEG-4 Part 2 encoding and the CoViAR compressed-domain representations
  (I-frame, accumulated motion vectors, accumulated residual).
* ``sampling``: TSN segment sampling, CoViAR I-/P-frame selection, dense RGB clip indices.
* ``transforms``: NumPy spatial transforms and per-modality normalisation.
"""
