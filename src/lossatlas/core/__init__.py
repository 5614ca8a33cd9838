"""The core layer: the parameter space (`params`), the `Objective` (the one place that runs
a model), data in weighted batches (`batching`), losses, errors, the memory budget, devices,
progress bars and data split across `torch.distributed` ranks."""
