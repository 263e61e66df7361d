"""histojax: pure-JAX training and evaluation for H&E histology (and MNIST)."""
