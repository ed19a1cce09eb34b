"""Evaluation metrics (paper Sec. 4): complexity, and later image/identity/pose metrics."""
