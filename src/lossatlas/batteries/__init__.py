"""The batteries: datasets, the model zoo, Hugging Face adapters, training with recorded
checkpoints, run folders, and callbacks that track curvature during training."""
