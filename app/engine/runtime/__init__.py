"""Running and reading models: onnxruntime sessions, model inspection, generated inputs, the
machine's environment, torch.export archive checks, bounded and confined child processes."""
