"""The torch side: loading (ONNX → torch, .pt2 programs), export back to ONNX, MACs, the training
loop and DDP; the distill and convert.onnx techniques. torch, onnx2torch and torch_pruning are
imported inside functions: technique modules import these helpers and the API lists techniques."""
