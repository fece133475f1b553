"""The method: corpora and the paper's preprocessing, base-model samples, delta, its lenses and steering."""
