"""Train-step benchmarks: ``python -m kd_jax.bench`` (see :mod:`kd_jax.bench.run`).

``sizes`` says what each step is and at which sizes it runs (shared with the PyTorch versions in
``torch_steps``), ``jax_steps`` builds the JAX steps from the methods' own code, ``workers``
measures each one in its own process, ``run`` is the command line and the report.
"""
