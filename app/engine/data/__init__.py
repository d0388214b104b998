"""Datasets (.npz) and the input feeds built from them."""
