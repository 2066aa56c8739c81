"""Running atmflow without a deployment: in-process grids for tests and benchmarks (the Flower
simulation itself runs through ``flwr run .``)."""
