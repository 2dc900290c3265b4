"""Reading a data set: manifest rows, checks before training, decoding and its cache, folds, datasets and transforms."""
