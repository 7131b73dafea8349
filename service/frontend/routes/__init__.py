"""HTTP routes, one module per protocol surface; each is a thin layer over service modules."""
