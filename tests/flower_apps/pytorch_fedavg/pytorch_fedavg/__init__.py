"""pytorch-fedavg: a Flower App (PyTorch MLP + FedAvg) that fedsim runs like Flower does."""
