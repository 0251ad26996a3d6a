"""Captions to training data: loading, cleaning, splitting, vocabulary, embeddings, tf.data."""
