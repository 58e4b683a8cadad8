import torch


class DiagonalGaussianDistribution:
    def __init__(self, parameters, deterministic=False):
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self):
        # Forge draws from the global generator; the stand-in from a fixed one, so that two runs compare
        noise = torch.randn(self.mean.shape, generator=torch.Generator().manual_seed(0)).to(self.mean)
        return self.mean + self.std * noise

    def mode(self):
        return self.mean
