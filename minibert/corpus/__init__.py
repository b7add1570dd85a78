"""Corpus files in, vectors on disk, read back: readers, extract (+ writers, resume), store, Ray, reduce, search."""
