"""Training of the bi-layer model (paper Sec. 3.2-3.5, App. A.1)."""
