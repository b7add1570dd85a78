"""Corpus files in, vectors on disk, read back: readers, extraction runs, the store, Ray, reduction, search."""
