"""Code both the receiver and the workers use."""
