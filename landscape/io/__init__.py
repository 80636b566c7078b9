"""Loading what the user names (model, checkpoint, data, loss) and the HDF5 results store."""
