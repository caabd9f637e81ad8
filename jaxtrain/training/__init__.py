"""What a training run is built from: `build` (data, model, optimizer, evaluators, each
alone, everything compiled before anything is written), the optimizer and its schedules,
the parallel Strategy (jit over a mesh, or pmap; joining other processes), `init_from`,
early stopping, profiling, and the accelerator table behind MFU. The loop that runs it all
is `jaxtrain.train`."""
