"""A conditional GAN for SASE FEL pulses, and the checks of its fidelity."""
