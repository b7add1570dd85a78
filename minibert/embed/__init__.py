"""Sentence and word vectors: encode, pooling, the sentence-transformers recipe, the scikit-learn estimator."""
