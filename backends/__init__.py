"""zeros_backends: implementations of the ZeroS backend protocol (spec section 10)."""
