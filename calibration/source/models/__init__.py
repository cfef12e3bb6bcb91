"""Float ONNX models built from numpy state dicts (no PyTorch needed)."""
