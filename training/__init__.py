"""The training loop: wires diffusion math, networks, data and sharding together."""
