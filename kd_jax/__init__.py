"""kd_jax: knowledge distillation for video action recognition in JAX/Flax."""

__version__ = "0.1.0.dev0"
