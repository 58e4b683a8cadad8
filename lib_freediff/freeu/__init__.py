"""FreeU: training-free re-weighting of U-Net backbone and skip features (Si et al., 2023)."""
