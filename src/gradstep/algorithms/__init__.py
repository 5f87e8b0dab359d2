"""One module per algorithm family: hyperparameters, validation, state and the update rule."""
