"""A trained model on images: batched extraction by image size, and the public API functions."""
