"""The measurements: plain functions over an Objective and directions that return result
dataclasses with `save()`: landscapes, the Hessian, trajectories, connectivity, alignment,
similarity, mining and sharpness."""
