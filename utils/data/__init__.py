"""Data: hub datasets, image folders and the built-in digits as `image`/`labels` splits; the torch dataset and its
transforms."""
