"""zeros_conformance: the conformance suite for ZeroS backends."""
